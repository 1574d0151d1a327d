"""``run --dry-run --estimate`` and ``benchmarks/paper_scale.py --tiny`` print projected times;
the passes they multiply are counted from the attacks themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from robustad_bench.harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_estimate_prints_a_projection(tiny_suite, tmp_path, capsys):
    assert main(["run", str(tiny_suite), "--dry-run", "--estimate", "--device", "cpu", "--cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "8 cells, 3 fit tasks" in out and "projected:" in out and "CPU-hours" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("pc ") and " pgd " in ln)
    assert line.split()[4] == "2"  # PGD-2: 2 gradient passes per image, counted
    assert (tmp_path / "c" / "passes.json").is_file()  # kept for the next estimate
    assert main(["run", str(tiny_suite), "--estimate"]) == 2  # --estimate goes with --dry-run
    assert "--dry-run" in capsys.readouterr().err


def test_counted_passes_follow_the_attack():
    from robustad_bench.harness.estimate import count_passes
    from robustad_bench.harness.grid import expand
    from robustad_bench.harness.suite import parse_suite

    suite = parse_suite({
        "name": "p", "datasets": [{"name": "digits", "categories": ["0"]}], "detectors": [{"name": "zarnd"}],
        "attacks": [{"name": "pgd", "eps": "8/255", "steps": 7, "restarts": 2}, {"name": "square", "eps": "8/255", "steps": 30},
                    {"name": "fgsm", "eps": "8/255"}]}, file="p.yaml")
    passes = {c.attack.name: count_passes(c) for c in expand(suite)}
    assert (passes["pgd"].gradient, passes["fgsm"].gradient) == (14, 1)  # restarts × steps; one step
    assert passes["square"].gradient == 0 and passes["square"].forward >= 30  # score-only: queries, no gradient


def test_a_composite_is_charged_only_the_parts_its_group_did_not_make():
    from robustad_bench.harness.estimate import count_passes, taken_names
    from robustad_bench.harness.grid import expand
    from robustad_bench.harness.suite import parse_suite

    suite = parse_suite({
        "name": "p", "datasets": [{"name": "digits", "categories": ["0"]}], "detectors": [{"name": "zarnd"}],
        "attacks": [{"name": "autoattack", "label": "aa-first", "eps": "8/255", "steps": 4, "queries": 20},  # runs after its parts
                    {"name": "apgd", "eps": "8/255", "steps": 4}, {"name": "square", "eps": "8/255", "steps": 20},
                    {"name": "apgd", "label": "apgd-other-eps", "eps": "4/255", "steps": 4},
                    {"name": "autoattack", "eps": "8/255", "steps": 4, "queries": 20}]}, file="p.yaml")
    cells = expand(suite)
    assert taken_names(cells) == [("apgd", "square"), (), (), (), ("apgd", "square")]
    whole, rest = count_passes(cells[0]), count_passes(cells[4], taken=taken_names(cells)[4])  # all parts; the rest
    apgd, square = count_passes(cells[1]), count_passes(cells[2])
    assert whole.gradient - rest.gradient == apgd.gradient > 0
    assert whole.forward - rest.forward == apgd.forward + square.forward >= 20


def test_paper_scale_tiny_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_scale.py"), "--tiny", "--device", "cpu",
                           "--cache", str(tmp_path), "--detectors", "patchcore", "zarnd", "--suites", "suites/seeds/zarnd.yaml"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "PGD-2 ms" in done.stdout and "overhead" in done.stdout
    assert "projected wall time of suites/seeds/zarnd.yaml" in done.stdout and "a composite takes the parts" in done.stdout
    assert "grad before s" in done.stdout and "a smoothed gradient rebuilds only the chunks it reaches" in done.stdout
    assert (tmp_path / "data" / "paper_scale_tiny" / "hazelnut" / "ground_truth" / "blob").is_dir()  # MVTec layout


def test_a_groups_certificates_are_charged_one_set_of_draws():
    """``certify`` draws the n noisy copies once per fitted detector and serves every radius
    from them (certify.py): the projection charges the draws once, not once per radius."""
    import torch

    from robustad_bench.harness.estimate import Cost, estimate
    from robustad_bench.harness.plan import make_plan
    from robustad_bench.harness.suite import parse_suite

    suite = parse_suite({
        "name": "c", "datasets": [{"name": "digits", "categories": ["0"], "n_test_normal": 5, "n_test_anomalous": 5}],
        "detectors": [{"name": "smoothed", "label": "s", "n": 8, "base": {"name": "zarnd", "input_size": 32}}],
        "attacks": [{"name": "certify", "eps": [0.25, 0.5]}]}, file="c.yaml")
    plan = make_plan(suite, keyed=False)
    lines, _, _ = estimate(plan, torch.device("cpu"), cost_of=lambda entry, **_: Cost(1.0, 2.0, 0.0, 16, None, None))
    (line,) = [ln for ln in lines if ln.attack == "certify"]
    assert line.cells == 2 and line.images == 20 and line.seconds == 10.0  # 10 test images, one smoothed forward each
    assert line.forward == 1  # what a certificate cell draws, shown per image
