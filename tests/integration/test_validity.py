"""Validity checks end to end: a gradient-masked detector is flagged, PatchCore is not."""

from __future__ import annotations

import json
import textwrap

from robustad_bench.harness.cli import main

SUITE = """
name: validity-tiny
seed: 0
batch_size: 8
map_size: 16
validity: true
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 6, n_test_normal: 4, n_test_anomalous: 4}
detectors:
  - {name: patchcore, label: pc, backbone: resnet18, input_size: 64, blur_sigma: 1.0}
  - {name: test_quantised_patchcore, label: masked}
attacks:
  - {name: none}
  - {name: pgd, eps: 8/255, steps: 5}
  - {name: square, eps: 8/255, steps: 100}
  - {name: autoattack, eps: 8/255, steps: 3, queries: 20}
"""


def test_masked_gradients_are_flagged_and_patchcore_is_not(tmp_path, masked_detector):
    suite = tmp_path / "validity.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    labels = {r["attack_label"] for r in rows}
    assert {"validity-pgd-unbounded", "validity-noise"} <= labels  # added by validity: true
    assert sorted(r["steps"] for r in rows if r["detector"] == "pc" and r["attack"] == "pgd" and r["eps"] < 1) == [5, 25]
    masked = {f for r in rows if r["detector"] == "masked" for f in r["flags"]}
    assert masked & {"unbounded-not-broken", "blackbox-stronger"}, masked
    unbounded = [r for r in rows if r["detector"] == "pc" and r["attack_label"] == "validity-pgd-unbounded"]
    assert unbounded[0]["metrics"]["image_auroc"] <= 0.05
    pc = {f for r in rows if r["detector"] == "pc" for f in r["flags"]}
    assert not pc & {"unbounded-not-broken", "blackbox-stronger"}, pc
    board = (out / "leaderboard.md").read_text()
    assert "| Flags" in board
    # the unbroken unbounded attack is a warning beside the entry and above its table, not only a flag
    assert "unbounded-not-broken" in masked
    html = (out / "site" / "index.html").read_text()
    assert "> ⚠ **masked**: an unbounded attack" in board and "| masked ⚠" in board and "⚠ pc" not in board
    assert '<p class="warning">⚠ <strong>masked</strong>' in html and "⚠ unverified" in html
    assert "Ranked by robust image AUROC at L∞ ε=8/255" in board  # never by the unbounded validity attack
    # the AD ensemble is named for what it is, and the page says why it is not standard AutoAttack
    assert "AutoAttack-AD (APGD-CE, FAB, Square, PGD for DLR)" in board and "third logit" in board
    assert "third logit" in (out / "site" / "index.html").read_text()


def test_autoattack_is_the_per_image_worst_case_on_patchcore(fit_on_textures):
    import torch

    from robustad_bench.harness.attacks import Objective, run_attack

    detector, split = fit_on_textures("patchcore", n_train=6, n_test=4, backbone="resnet18", input_size=64, blur_sigma=1.0)
    x, labels = split.test, torch.from_numpy(split.labels)
    with torch.no_grad():
        threshold = float(detector(x).score.median())
    common = {"eps": 8 / 255, "seed": 0}
    ensemble = run_attack("autoattack", detector, x, labels, None, steps=3, queries=20, threshold=threshold, **common)
    parts = [run_attack("apgd", detector, x, labels, None, steps=3, **common),
             run_attack("fab", detector, x, labels, None, steps=3, threshold=threshold, **common),
             run_attack("square", detector, x, labels, None, steps=20, **common),
             run_attack("pgd", detector, x, labels, None, steps=3, **common)]
    with torch.no_grad():
        objective = Objective(detector, labels, None, "detection")
        for part in parts:
            assert (objective(ensemble) >= objective(part) - 1e-5).all()


TOY_SUITE = """
name: toy
seed: 0
batch_size: 8
map_size: 16
validity: true
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 6, n_test_normal: 4, n_test_anomalous: 4}
detectors:
  - {name: patchcore, label: pc, backbone: resnet18, input_size: 64, blur_sigma: 1.0}
attacks:
  - {name: none}
  - {name: test_toy, eps: 8/255, steps: 2, brightness: 1.0}
"""


def brighten(objective, x, threat, context, *, brightness: float = 1.0):
    """A 'gradient' attack that ignores the gradient: every pixel + brightness·ε."""
    return threat.project(x + brightness * threat.eps, x)


def test_an_attack_from_a_test_file_runs_through_validate_a_cell_and_the_checks(tmp_path, toy_attack, capsys):
    from robustad_bench.harness.attacks.threat import REQUIRED

    toy_attack(brighten, kind="gradient", iterative=True, threat={"norm": "linf", "eps": REQUIRED, "steps": 1})
    suite = tmp_path / "toy.yaml"
    suite.write_text(textwrap.dedent(TOY_SUITE))
    assert main(["validate", str(suite)]) == 0
    assert main(["list", "attacks"]) == 0 and "test_toy" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    toy = [r for r in rows if r["attack"] == "test_toy"]
    assert sorted(r["steps"] for r in toy) == [2, 10]  # validity: true added its 5× steps point
    assert all(r["attack_kind"] == "gradient" and r["knowledge"] == "label" and r["threat"]["eps"] == 8 / 255 for r in toy)
    assert all("noise-as-strong" in r["flags"] for r in toy)  # no better than noise, and flagged so


def test_l2_square_rows_stay_inside_the_ball(tmp_path):
    """Square's L2 stripes at ε = 0.5, 2 and 4 on 64-px textures: every row's l2_max ≤ ε
    (an fp32 norm in the projection left 4.0000219 at ε = 4)."""
    import json

    from robustad_bench.harness.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text("name: l2square\ndatasets:\n  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 4, "
                     "n_test_normal: 4, n_test_anomalous: 4}\ndetectors:\n  - {name: patchcore, backbone: resnet18, input_size: 64}\n"
                     "attacks:\n  - {name: none}\n  - {name: square, norm: l2, eps: [0.5, 2, 4], steps: 30}\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    attacked = [r for r in rows if r["attack"] == "square"]
    assert len(attacked) == 3
    for row in attacked:
        assert row["perturbation"]["l2_max"] <= row["eps"], row["perturbation"]
        assert row["perturbation"]["l2_max"] > 0.9 * row["eps"]  # the stripes use the budget
