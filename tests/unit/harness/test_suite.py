"""Suite validation: every problem names file, key path and allowed values; grid expansion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from robustad_bench.core.errors import SuiteErrors, UserError
from robustad_bench.core.schema import parse_float
from robustad_bench.harness.datacheck import check_suite_data
from robustad_bench.harness.grid import expand, select
from robustad_bench.harness.suite import load_suite, parse_suite

BASE = {
    "name": "t",
    "datasets": [{"name": "digits", "categories": ["0", "1"]}],
    "detectors": [{"name": "patchcore", "backbone": "resnet18"}],
    "attacks": [{"name": "none"}, {"name": "pgd", "eps": ["2/255", "8/255"], "steps": [5, 10]}],
}


def problems(raw) -> list[str]:
    with pytest.raises(SuiteErrors) as info:
        parse_suite(raw, file="s.yaml")
    return [str(p) for p in info.value.problems]


def with_(section, index, **changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw[section][index].update(changes)
    return raw


def test_grid_is_the_product_of_lists_and_list_kwargs():
    suite = parse_suite(BASE, file="s.yaml")
    cells = expand(suite)
    assert len(cells) == 2 * (1 + 2 * 2)  # categories × (none + eps × steps)
    assert len({c.cell_id for c in cells}) == len(cells)
    eps = sorted({c.eps for c in cells})
    assert eps == pytest.approx([0.0, 2 / 255, 8 / 255])


def test_attack_defaults_are_recorded_in_the_cell():
    cell = [c for c in expand(parse_suite(BASE, file="s.yaml")) if c.attack.name == "pgd"][0]
    kw = cell.attack.kwargs
    assert kw["step_size"] is None  # the default rule, derived in one place: the threat model
    assert cell.spec.threat_model(kw).alpha == pytest.approx(2.5 * kw["eps"] / kw["steps"])
    assert kw["random_start"] is True and kw["knowledge"] == "label"


def test_misspelled_detector_names_key_and_nearest_name():
    (msg,) = problems(with_("detectors", 0, name="patchcor"))
    assert "s.yaml" in msg and "detectors[0].name" in msg and "'patchcore'" in msg


def test_unknown_key_lists_allowed_keys():
    (msg,) = problems(with_("attacks", 1, stepz=3))
    assert "attacks[1].stepz" in msg and "steps" in msg and "step_size" in msg


def test_eps_out_of_range_and_wrong_types():
    msgs = problems(with_("attacks", 1, eps=2.0, steps="ten"))
    assert any("attacks[1].steps" in m and "int" in m for m in msgs)
    raw = with_("attacks", 1, eps=2.0)
    assert any("attacks[1].eps" in m and "[0, 1]" in m for m in problems(raw))
    assert any("norm" in m and "'linf'" in m for m in problems(with_("attacks", 1, norm="l3")))


def test_every_problem_is_reported_at_once():
    raw = with_("detectors", 0, name="nope")
    raw["attacks"][1]["objective"] = "segmentation"
    raw["typo"] = 1
    assert len(problems(raw)) == 3


def test_unknown_category_lists_allowed(tmp_path):
    raw = with_("datasets", 0, categories=["11"])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteErrors) as info:
        load_suite(path)
    assert "datasets[0]" in str(info.value) and "'9'" in str(info.value)


def test_bad_backbone_is_a_deep_check_with_a_hint(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_("detectors", 0, backbone="resnet_18")))
    load_suite(path, deep=False)  # the schema is fine
    with pytest.raises(SuiteErrors, match=r"detectors\[0\].*resnet18"):
        load_suite(path)


def test_missing_required_key_and_bad_yaml(tmp_path, monkeypatch):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["attacks"] = [{"name": "pgd"}]
    assert any("needs the key 'eps'" in m for m in problems(raw))
    monkeypatch.delenv("ROBUSTAD_DATA", raising=False)  # mvtec's root defaults to $ROBUSTAD_DATA/mvtec
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["datasets"] = [{"name": "mvtec"}]
    (tmp_path / "no-root.yaml").write_text(yaml.safe_dump(raw))
    suite = load_suite(tmp_path / "no-root.yaml")  # valid: the data check is deferred, and run refuses it
    with pytest.raises(SuiteErrors, match="datasets\\[0\\].root.*ROBUSTAD_DATA is not set"):
        check_suite_data(suite, defer_unreachable=False)
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(UserError, match="bad.yaml"):
        load_suite(path)


def test_fractions_parse():
    assert parse_float("8/255") == pytest.approx(8 / 255)
    assert parse_float(" 2 / 255 ") == pytest.approx(2 / 255)
    assert parse_float(0.5) == 0.5


def test_only_glob_selects_cells():
    cells = expand(parse_suite(BASE, file="s.yaml"))
    assert len(select(cells, "*.none.*")) == 2
    assert len(select(cells, "digits.1")) == 5


def test_seed_list_expands_the_grid():
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["seed"] = [0, 1, 2]
    cells = expand(parse_suite(raw, file="s.yaml"))
    assert len(cells) == 3 * 10 and sorted({c.seed for c in cells}) == [0, 1, 2]
    raw["seed"] = "zero"
    assert any("seed" in m and "integer" in m for m in problems(raw))


def test_knowledge_must_fit_the_objective():
    (msg,) = problems(with_("attacks", 1, knowledge="mask"))  # default objective: detection
    assert "attacks[1].knowledge" in msg and "'label'" in msg
    raw = with_("attacks", 1, objective="localization", knowledge="mask")
    assert parse_suite(raw, file="s.yaml")  # consistent: fine


SHIPPED = sorted((Path(__file__).resolve().parents[3] / "suites").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_suites_validate(path, capsys, monkeypatch, tmp_path):
    """Offline, with empty weight caches, every shipped suite validates; one that loads
    pretrained weights names the fetch command (its run would stop there)."""
    from robustad_bench.harness.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    text = path.read_text()
    pretrained = re.search(r"weights: (timm|\"?robustness:)", text) is not None
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert (f"robustad-bench weights fetch {path}" in capsys.readouterr().out) == pretrained


def test_an_attacks_own_check_runs_at_validation():
    raw = {"datasets": [{"name": "digits"}], "detectors": [{"name": "zarnd"}],
           "attacks": [{"name": "autoattack", "eps": 0.03, "parts": "apgd+dlr"}]}
    with pytest.raises(SuiteErrors, match=r"attacks\[0\].parts.*unknown autoattack part.*'dlr'.*apgd\+fab\+square\+pgd"):
        parse_suite(raw, file="s.yaml")


def test_repeated_grid_points_are_errors_naming_both_entries():
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["seed"] = [0, 0]
    raw["datasets"][0]["categories"] = ["0", "1", "0"]
    raw["attacks"].append({"name": "pgd", "eps": "8/255", "steps": 10})  # also a point of attacks[1]
    raw["attacks"].append({"name": "fgsm", "eps": ["2/255", "2/255"]})  # one list, twice
    msgs = problems(raw)
    assert any("seed" in m and "[0]" in m for m in msgs)
    assert any("datasets[0].categories" in m and "'0'" in m for m in msgs)
    assert any("attacks[2]" in m and "attacks[1]" in m for m in msgs)
    assert any("attacks[3]" in m and "also given by attacks[3]" in m for m in msgs)


def test_cells_that_differ_only_in_a_label_get_distinct_ids():
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["attacks"] = [{"name": "pgd", "label": "dét", "eps": "8/255"}, {"name": "pgd", "label": "dèt", "eps": "8/255"}]
    cells = expand(parse_suite(raw, file="s.yaml"))
    ids = [c.cell_id for c in cells]
    assert len(set(ids)) == len(ids) == 4  # 2 categories × 2 labels


def test_a_detector_entry_may_name_the_attacks_it_runs():
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["detectors"].append({"name": "patchcore", "backbone": "resnet18", "label": "few", "attacks": ["none"]})
    cells = expand(parse_suite(raw, file="s.yaml"))
    assert {c.attack.label for c in cells if c.detector.label == "few"} == {"none"}
    assert len([c for c in cells if c.detector.label == "patchcore"]) == 2 * (1 + 2 * 2)  # the others run every attack
    raw["detectors"][1]["attacks"] = ["none", "pgd-typo"]
    with pytest.raises(SuiteErrors, match=r"detectors\[1\].attacks.*'pgd-typo'.*attack labels: none, pgd"):
        parse_suite(raw, file="s.yaml")
