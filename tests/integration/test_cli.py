"""The CLI end to end on a tiny suite of embedded data: the contracts users rely on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad_bench.harness import tasks as tasks_module
from robustad_bench.harness.cli import main
from robustad_bench.harness.runner import run_suite
from robustad_bench.harness.suite import load_suite

ROW_FIELDS = {
    "cell_id", "suite", "detector", "dataset", "category", "attack", "norm", "eps", "steps", "knowledge",
    "task", "seed", "metrics", "n_normal", "n_anomalous", "seconds", "config_hash", "versions", "weights", "flags",
}
METRIC_FIELDS = {"image_auroc", "image_ap", "f1", "f1_max", "gmean", "pixel_auroc", "aupro"}
N_CELLS = 8  # (brick, grass, digits/1) × (none, pgd) + (brick, grass) × fgsm-al (digits has no masks)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def ran(tiny_suite, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    return out, cache


def test_run_writes_the_contract(ran, capsys):
    out, _ = ran
    result = rows(out)
    assert len(result) == N_CELLS
    for row in result:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert METRIC_FIELDS <= set(row["metrics"])
        assert row["status"] == "ok" and row["weights"] == "random"
        assert isinstance(row["eps"], float)
        data = np.load(out / "cells" / row["cell_id"] / "scores.npz")
        # every reported image AUROC is recomputable from the saved scores
        assert row["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(data["labels"], data["scores"]), abs=1e-6)
        assert row["n_anomalous"] == int(data["labels"].sum())
        if row["dataset"] == "textures":
            assert data["maps"].shape == data["masks"].shape == (8, 16, 16)
            assert row["metrics"]["pixel_auroc"] == pytest.approx(
                roc_auc_score(data["masks"].ravel(), data["maps"].ravel()), abs=1e-6)
        else:
            assert "maps" not in data and row["metrics"]["pixel_auroc"] is None
    al = [r for r in result if r["attack_label"] == "fgsm-al"]
    assert {r["dataset"] for r in al} == {"textures"} and all(r["task"] == "localization" and r["knowledge"] == "mask" for r in al)
    clean_px = {r["category"]: r["metrics"]["pixel_auroc"] for r in result if r["attack"] == "none" and r["dataset"] == "textures"}
    assert all(r["metrics"]["pixel_auroc"] < clean_px[r["category"]] for r in al)  # the map attack hurts localization
    clean = [r for r in result if r["attack"] == "none"]
    assert all(r["eps"] == 0.0 and r["knowledge"] == "none" for r in clean)
    adv = [r for r in result if r["attack"] == "pgd"]
    assert all(r["perturbation"]["linf_max"] <= 8 / 255 + 1e-6 and r["passes"]["gradient"] > 0 for r in adv)
    # the bank search is recorded per attacked cell: one query per 8 × 8 patch of a 64-px input, per
    # attack pass and per image in the final scoring pass
    searches = [r["search"] for r in adv]
    assert all(s["precision"] == "fp32" and s["queries"] >= s["fallback_fp32"] + s["fallback_exhaustive"] for s in searches)
    assert [s["queries"] for s in searches] == [64 * (r["passes"]["forward"] + r["n_normal"] + r["n_anomalous"]) for r in adv]
    assert all(r["search"] is None for r in clean)
    md = (out / "leaderboard.md").read_text()
    assert "random init" in md and "pgd-2 linf ε=8/255 (label)" in md
    assert (out / "site" / "index.html").is_file()


def test_robust_pixel_auroc_on_textures_is_realizable(ran):
    """At 8/255 on the embedded textures: the published robust pixel AUROC is no higher than
    the strongest single attack, no lower than the per-pixel mix nobody can reach, and equal
    to the pooled AUROC of the one map per image it records."""
    out = ran[0]
    records = [json.loads(line) for line in (out / "robust.jsonl").read_text().splitlines()]
    textures = [r for r in records if r["dataset"] == "textures" and r["robust_pixel_auroc"] is not None]
    assert len(textures) == 2  # brick and grass at L∞ 8/255
    for record in textures:
        here = [r for r in rows(out) if r["dataset"] == "textures" and r["category"] == record["category"]]
        arrays = {r.get("attack_label") or r["attack"]: np.load(out / "cells" / r["cell_id"] / "scores.npz") for r in here}
        masks = arrays["none"]["masks"]
        stack = np.stack([a["maps"].astype(np.float32) for a in arrays.values()])
        mix = roc_auc_score(masks.ravel(), np.where(masks == 1, stack.min(0), stack.max(0)).ravel())
        singles = [r["metrics"]["pixel_auroc"] for r in here if r["attack"] != "none"]
        assert mix - 1e-9 <= record["robust_pixel_auroc"] <= min(singles) + 1e-9, (mix, record["robust_pixel_auroc"], singles)
        chosen = record["robust_pixel_auroc_choice"]["images"]
        maps = np.stack([arrays[name]["maps"][i].astype(np.float32) for i, name in enumerate(chosen)])
        assert record["robust_pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_attack_lowers_auroc_on_textures(ran):
    result = rows(ran[0])
    clean = np.mean([r["metrics"]["image_auroc"] for r in result if r["attack"] == "none"])
    adv = np.mean([r["metrics"]["image_auroc"] for r in result if r["attack"] == "pgd"])
    assert adv < clean - 0.2


def test_rerun_does_no_model_work(ran, tiny_suite, monkeypatch):
    out, cache = ran
    before = (out / "results.jsonl").read_text()

    def forbidden(*args, **kwargs):
        raise AssertionError("model work on a finished suite")

    monkeypatch.setattr("robustad_bench.harness.runner.fit_state", forbidden)
    monkeypatch.setattr("robustad_bench.harness.runner.evaluate_cell", forbidden)
    report = run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False)
    assert report.already_done == N_CELLS and report.computed == 0
    assert (out / "results.jsonl").read_text() == before
    # a fresh output folder is filled from the content-addressed cache
    report = run_suite(load_suite(tiny_suite), out_dir=out.parent / "out2", cache_dir=cache, progress=False)
    assert report.from_cache == N_CELLS and len(rows(out.parent / "out2")) == N_CELLS


def test_changing_batch_size_recomputes_nothing_and_changes_no_number(ran, tiny_suite, monkeypatch):
    """No number depends on the batch size (batch invariance), so it is in no key: a suite
    run at batch 8, then at batch 3, is served whole — same ids, same rows, same arrays."""
    out, cache = ran
    before = {r["cell_id"]: r for r in rows(out)}

    def forbidden(*args, **kwargs):
        raise AssertionError("model work after a batch-size change")

    monkeypatch.setattr("robustad_bench.harness.runner.fit_state", forbidden)
    monkeypatch.setattr("robustad_bench.harness.runner.evaluate_cell", forbidden)
    tiny_suite.write_text(tiny_suite.read_text().replace("batch_size: 8", "batch_size: 3"))
    report = run_suite(load_suite(tiny_suite), out_dir=out.parent / "batch3", cache_dir=cache, progress=False)
    assert report.computed == 0 and report.from_cache == len(before)
    after = {r["cell_id"]: r for r in rows(out.parent / "batch3")}
    assert after.keys() == before.keys()
    for cell_id, row in before.items():
        assert after[cell_id]["metrics"] == row["metrics"] and after[cell_id]["config_hash"] == row["config_hash"]
        assert after[cell_id]["scores_sha256"] == row["scores_sha256"]


def test_force_recomputes_every_cell_and_changes_no_number(ran, tiny_suite):
    """--force is a mode of the cache (nothing read, everything written), not a runner flag."""
    out, cache = ran
    before = {r["cell_id"]: r for r in rows(out)}
    report = run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False, force=True)
    assert report.computed == len(before) and report.from_cache == 0 and report.already_done == 0
    after = {r["cell_id"]: r for r in rows(out)}
    assert all(after[k]["scores_sha256"] == r["scores_sha256"] and after[k]["metrics"] == r["metrics"] for k, r in before.items())


def test_changing_one_attack_recomputes_only_its_cells(ran, tiny_suite, monkeypatch):
    out, cache = ran
    tiny_suite.write_text(tiny_suite.read_text().replace("steps: 2", "steps: 3"))
    report = run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False)
    assert report.computed == 3 and report.already_done == N_CELLS - 3
    assert len(rows(out)) == N_CELLS and all(r["steps"] == 3 for r in rows(out) if r["attack"] == "pgd")


def test_resume_after_interruption(tiny_suite, tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    real, calls = tasks_module.evaluate_cell, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("robustad_bench.harness.runner.evaluate_cell", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False)
    kept = rows(out)
    assert len(kept) == 2
    monkeypatch.setattr("robustad_bench.harness.runner.evaluate_cell", real)
    report = run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False)
    assert report.already_done == 2 and report.computed == N_CELLS - 2
    assert {r["cell_id"]: r for r in rows(out)}[kept[0]["cell_id"]] == kept[0]


def test_resume_after_sigkill(tiny_suite, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "robustad_bench.harness.cli", "run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    done_before = {json.loads(line)["cell_id"] for line in results.read_text().splitlines() if line.endswith("}")}
    assert done_before
    report = run_suite(load_suite(tiny_suite), out_dir=out, cache_dir=cache, progress=False)
    assert report.already_done >= len(done_before) and len(rows(out)) == N_CELLS


def test_a_failing_cell_is_kept_and_exit_code_is_1(tiny_suite, tmp_path, monkeypatch):
    real = tasks_module.evaluate_cell

    def pgd_breaks(cell, *args, **kwargs):
        if cell.attack.name == "pgd" and cell.category == "grass":
            raise RuntimeError("boom")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr("robustad_bench.harness.runner.evaluate_cell", pgd_breaks)
    out = tmp_path / "out"
    code = main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"])
    assert code == 1
    result = rows(out)
    failed = [r for r in result if r["status"] == "failed"]
    assert len(result) == N_CELLS and len(failed) == 1
    assert "boom" in (out / failed[0]["traceback"]).read_text()


def test_parallel_workers_give_the_same_rows(ran, tiny_suite, tmp_path):
    out, _ = ran
    par = tmp_path / "par"
    report = run_suite(load_suite(tiny_suite), out_dir=par, cache_dir=tmp_path / "fresh", workers=2, progress=False)
    assert report.computed == N_CELLS
    key = lambda r: (r["cell_id"], r["metrics"]["image_auroc"])  # noqa: E731
    assert sorted(map(key, rows(par))) == sorted(map(key, rows(out)))


def test_data_prepare_writes_mvtec_layout(tmp_path, capsys):
    assert main(["data", "prepare", "digits", "--root", str(tmp_path)]) == 0
    assert "digits/0:" in capsys.readouterr().out
    assert main(["data", "prepare", "textures", "--root", str(tmp_path)]) == 0
    roots = list((tmp_path / "textures").iterdir())
    capsys.readouterr()
    assert main(["data", "check", "mvtec", "--root", str(roots[0])]) == 0
    out = capsys.readouterr().out
    assert "| brick" in out and "categories ok" in out
    assert main(["data", "prepare", "mvtec"]) == 0  # a published set: where to get it, with its checksum
    out = capsys.readouterr().out
    assert "https://www.mvtec.com" in out and "sha256 cf4313b1" in out and "data check mvtec" in out
    assert main(["data", "prepare", "nonesuch"]) == 2


def test_validate_misspelled_detector_exits_2(tiny_suite, capsys):
    tiny_suite.write_text(tiny_suite.read_text().replace("name: patchcore", "name: patchcor"))
    assert main(["validate", str(tiny_suite)]) == 2
    err = capsys.readouterr().err
    assert "detectors[0].name" in err and "Did you mean 'patchcore'" in err and str(tiny_suite) in err


def test_validate_ok_and_dry_run(tiny_suite, capsys):
    assert main(["validate", str(tiny_suite)]) == 0
    assert main(["run", str(tiny_suite), "--dry-run", "--only", "*brick*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "3 cells, 1 fit tasks" and all("brick" in line for line in lines[-4:-1])


def test_list(capsys):
    for kind, expected in [("detectors", "patchcore"), ("attacks", "pgd"), ("datasets", "textures"), ("metrics", "aupro")]:
        assert main(["list", kind]) == 0
        assert expected in capsys.readouterr().out.split()


def test_missing_suite_and_missing_data_root(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    suite = tmp_path / "m.yaml"
    suite.write_text("name: m\ndatasets: [{name: mvtec, root: /no/such/dir, categories: [bottle]}]\n"
                     "detectors: [{name: patchcore, backbone: resnet18}]\nattacks: [{name: none}]\n")
    code = main(["run", str(suite), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"])
    assert code == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_quick_suite_validates():
    """The embedded suite needs no data and no weights (every shipped suite: tests/unit/harness/test_suite.py)."""
    root = Path(__file__).resolve().parents[2]
    assert main(["validate", str(root / "suites" / "quick.yaml")]) == 0


def test_cuda_requested_without_cuda_exits_2(tiny_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["run", str(tiny_suite), "--out", str(tmp_path / "o"), "--device", "cuda", "--no-progress"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_corrupt_cache_file_is_named_and_computed_again(ran, tiny_suite, caplog):
    out, cache = ran
    import shutil

    shutil.rmtree(cache / "eval")  # force the fit artifacts to be read again
    corrupt = sorted((cache / "fit").rglob("*.pt"))
    for path in corrupt:
        path.write_bytes(b"truncated")
    assert main(["run", str(tiny_suite), "--out", str(out.parent / "again"), "--cache", str(cache), "--no-progress"]) == 0
    assert "corrupt cache file" in caplog.text and str(corrupt[0]) in caplog.text
    rows = [json.loads(line) for line in (out.parent / "again" / "results.jsonl").read_text().splitlines()]
    before = {r["cell_id"]: r["metrics"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert all(r["status"] == "ok" and r["metrics"] == before[r["cell_id"]] for r in rows)  # recomputed, same numbers


def test_pixel_metrics_default_to_the_detectors_input_size(tiny_suite, tmp_path):
    tiny_suite.write_text(tiny_suite.read_text().replace("map_size: 16\n", ""))
    out = tmp_path / "out"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress", "--only", "pc.textures.brick.*"]) == 0
    assert "oracle" in (out / "leaderboard.md").read_text()  # the F1 threshold is called what it is
    for row in rows(out):
        assert row["threshold_rule"] == "oracle: F1-max on the clean test set"
        assert row["pixel_evaluation"] == {"resolution": 64, "mask_rule": "any"}  # patchcore's input_size
        saved = np.load(out / "cells" / row["cell_id"] / "scores.npz")
        assert saved["maps"].shape[1:] == (64, 64) and saved["maps"].dtype == np.float16
        from robustad_bench.harness.metrics import compute_metrics

        again = compute_metrics(saved["labels"], saved["scores"], maps=saved["maps"].astype(np.float32), masks=saved["masks"])
        assert again["pixel_auroc"] == row["metrics"]["pixel_auroc"]  # recomputable from what is saved


def test_full_suite_is_the_complete_grid_and_dry_runs_without_the_data(capsys, monkeypatch):
    monkeypatch.delenv("ROBUSTAD_DATA", raising=False)
    monkeypatch.setattr("robustad_bench.harness.weights.hub_reachable", lambda: True)  # online: weights come at first use
    full = str(Path(__file__).resolve().parents[2] / "suites" / "full.yaml")
    assert main(["validate", full]) == 0
    out = capsys.readouterr().out
    assert out.count("data check is deferred") == 13
    assert main(["run", full, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cells, fits, trained, adopted = map(int, re.fullmatch(r"(\d+) cells, (\d+) fit tasks \((\d+) trained, (\d+) adopt a "
                                                         r"shared base's fit\)", lines[-1]).groups())
    # 7 detectors and 8 smoothed ones (the four seed detectors at σ 0.25 and 0.5) on every industrial and medical category;
    # a smoothed entry adopts its base's fit, which is the plain entry's: nothing is trained twice
    categories = 15 + 12 + 3 + 6 + 4 + 12 + 5 + 1 + 1
    assert len(lines) - 1 == cells > 10_000 and fits == (7 + 8) * categories + (10 + 20 + 10 + 10)
    assert (trained, adopted) == (7 * categories + 50, 8 * categories)
    ids = lines[:-1]
    smoothed = {f"{d}-smoothed-{s}" for d in ("patchcore-wrn50", "anomalydino-vits14", "zarnd-r18-linf2", "patchguard-paper")
                for s in ("s025", "s05")}
    for dataset in ("mvtec", "visa", "btad", "mpdd", "wfdd", "dtd_synthetic", "mvtec_loco", "headct", "brats"):
        assert {i.split(".")[0] for i in ids if i.split(".")[1] == dataset} == {
            "patchcore-wrn50", "anomalydino-vits14", "zarnd-r18-linf2", "patchguard-paper",
            "anomalib-padim-wrn50", "anomalib-patchcore-wrn50", "anomalib-dfm-r50"} | smoothed, dataset
    assert {i.split(".")[3] for i in ids if i.split(".")[0] in smoothed} == {"none", "certify", "pgd-eot-l2"}  # only those
    assert not [i for i in ids if ".certify." in i and i.split(".")[0] not in smoothed]  # nothing to certify
    for dataset in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        assert {i.split(".")[0] for i in ids if i.split(".")[1] == dataset} == {"zarnd-r18-linf2"}, dataset
    assert not [i for i in ids if ".headct." in i and ("segpgd" in i or "autoattack-al" in i)]  # no masks: AD only


def test_version_verbosity_exit_codes_and_every_metric_column_listed(capsys, monkeypatch, tmp_path):
    from robustad_bench.harness import __version__
    from robustad_bench.harness.cli import default_cache
    from robustad_bench.harness.metrics import compute_metrics

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"robustad-bench {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit codes:" in capsys.readouterr().out
    assert main(["-q", "list", "metrics"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    metrics = compute_metrics(labels, scores + 0.1, threshold=0.3, clean=scores, perturbed=True)
    assert set(metrics) <= listed, set(metrics) - listed
    monkeypatch.delenv("ROBUSTAD_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache() == tmp_path / "robustad-bench"
    monkeypatch.setenv("ROBUSTAD_BENCH_CACHE", str(tmp_path / "mine"))
    assert default_cache() == tmp_path / "mine"


def test_python_dash_m_and_version_from_a_non_editable_install(tmp_path):
    """The wheel as users get it: ``python -m robustad_bench`` and the templates and schemas it ships."""
    root = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # the dependencies (torch, ...) from the environment running the tests — a virtual
    # environment's own site-packages, which ``--system-site-packages`` would not give (it
    # exposes the base interpreter's) — as plain path entries: their editable-install hooks
    # stay inactive, so the package can only come from the install below
    inner = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(inner) / "_outer_environment.pth").write_text("".join(f"{p}\n" for p in outer))
    build = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(root)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build the package here: {build.stderr[-300:]}")
    probe = ("import pathlib, robustad_bench, robustad_bench.harness as h, robustad_bench.leaderboards as l; "
             "print(robustad_bench.__file__); "
             "print(all((pathlib.Path(m.__file__).parent / f).is_file() for m, f in ((h, 'schemas/results_row.schema.json'), "
             "(l, 'schemas/model_card.schema.json'), (l, 'templates/sort.js'), (l, 'templates/howto.html.j2'))))")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    location, shipped = done.stdout.split()
    assert str(venv) in location and shipped == "True"
    version = subprocess.run([str(python), "-m", "robustad_bench", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("robustad-bench ")
    helped = subprocess.run([str(venv / "bin" / "robustad-bench"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "exit codes:" in helped.stdout
