"""Plugins without forking: the example package under ``examples/plugin`` is made visible
to ``importlib.metadata`` as an installed distribution (its package on ``sys.path`` and a
``.dist-info`` with the entry points of its ``pyproject.toml``), then used from the CLI."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import tomllib

from robustad_bench.adapters import DETECTORS
from robustad_bench.harness.attacks import ATTACKS
from robustad_bench.harness.cli import main
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.metrics import METRICS

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"
REGISTRIES = (DETECTORS, ATTACKS, DATASETS, METRICS)

SUITE = """\
name: plug
batch_size: 4
datasets: [{name: stripes, categories: [red], image_size: 32, n_train: 6, n_test: 6}]
detectors: [{name: meancolour, input_size: 32}]
attacks: [{name: none}, {name: pgd, eps: 8/255, steps: 3}]
"""


def install(site: Path, name: str, entry_points: dict[str, dict[str, str]], package: Path | None = None) -> None:
    """A distribution importlib.metadata finds on sys.path: METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n" for group, points in entry_points.items()))
    if package is not None:
        shutil.copytree(package, site / package.name)


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    install(site, project["name"], project["entry-points"], PLUGIN / "robustad_example_plugin")
    monkeypatch.syspath_prepend(str(site))
    for registry in REGISTRIES:
        registry.load_plugins(again=True)
    yield site
    sys.path[:] = [p for p in sys.path if p != str(site)]
    for module in [m for m in sys.modules if m.startswith("robustad_example_plugin")]:
        del sys.modules[module]
    for registry in REGISTRIES:
        registry.load_plugins(again=True)


def test_the_example_plugin_lists_validates_and_runs(plugin_site, tmp_path, capsys):
    assert main(["list", "detectors"]) == 0
    assert "meancolour" in capsys.readouterr().out.split()
    assert main(["list", "datasets"]) == 0
    assert "stripes" in capsys.readouterr().out.split()
    suite = tmp_path / "plug.yaml"
    suite.write_text(SUITE)
    assert main(["validate", str(suite)]) == 0
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    board = (out / "leaderboard.md").read_text()
    assert "| meancolour" in board and "stripes" in board


def test_a_suite_may_name_an_object_by_import_path(plugin_site, tmp_path, capsys):
    suite = tmp_path / "plug.yaml"
    suite.write_text(SUITE.replace("name: meancolour", 'name: "robustad_example_plugin.detector:MeanColour", label: mc'))
    assert main(["validate", str(suite)]) == 0
    suite.write_text(SUITE.replace("name: meancolour", 'name: "robustad_example_plugin.detector:NoSuch"'))
    assert main(["validate", str(suite)]) == 2
    assert "has no 'NoSuch'" in capsys.readouterr().err


def test_uninstalled_the_suite_names_the_missing_plugin(tmp_path, capsys):
    suite = tmp_path / "plug.yaml"
    assert main(["validate", str(suite.parent / "none.yaml")]) == 2
    suite.write_text(SUITE)  # the example plugin is not installed here
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "detectors[0].name: unknown detector 'meancolour'" in err and "its package is not installed" in err
    assert "datasets[0].name: unknown dataset 'stripes'" in err and "robustad_bench.datasets" in err
    suite.write_text(SUITE.replace("name: meancolour", "name: patchcor"))
    assert main(["validate", str(suite)]) == 2
    assert "Did you mean 'patchcore'" in capsys.readouterr().err
    suite.write_text(SUITE.replace("name: meancolour", 'name: "robustad_example_plugin.detector:MeanColour"'))
    assert main(["validate", str(suite)]) == 2
    assert "No module named 'robustad_example_plugin'" in capsys.readouterr().err


def test_a_broken_plugin_warns_and_leaves_the_others_working(tmp_path, monkeypatch, caplog, capsys):
    site = tmp_path / "site-packages"
    install(site, "broken-plugin", {"robustad_bench.detectors": {"broken": "broken_plugin_module_xyz:Thing"}})
    monkeypatch.syspath_prepend(str(site))
    DETECTORS.load_plugins(again=True)
    try:
        assert "broken" in DETECTORS.names() and "patchcore" in DETECTORS.names()
        suite = tmp_path / "b.yaml"
        suite.write_text(SUITE.replace("name: meancolour, input_size: 32", "name: broken").replace("name: stripes, categories: [red], image_size: 32, n_train: 6, n_test: 6", "name: digits"))
        assert main(["validate", str(suite)]) == 2
        err = capsys.readouterr().err
        assert "plugin package 'broken-plugin'" in err and "broken_plugin_module_xyz" in err
        assert "broken-plugin" in caplog.text
        assert DETECTORS.get("patchcore") is not None
    finally:
        sys.path[:] = [p for p in sys.path if p != str(site)]
        DETECTORS.load_plugins(again=True)


def test_a_plugin_clashing_with_a_built_in_is_an_error_naming_both(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    install(site, "clash-plugin", {"robustad_bench.detectors": {"patchcore": "clash_module:PatchCore"}})
    monkeypatch.syspath_prepend(str(site))
    from robustad_bench.core.errors import UserError

    try:
        with pytest.raises(UserError, match=r"plugin package 'clash-plugin' registers detector 'patchcore' .*built-in"):
            DETECTORS.load_plugins(again=True)
    finally:
        sys.path[:] = [p for p in sys.path if p != str(site)]
        DETECTORS.load_plugins(again=True)
