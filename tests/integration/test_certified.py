"""Certified rows end to end on the embedded textures: every smoothed detector of the four gets
a certify row at two L2 radii whose certified image AUROC an independent computation from the
saved bounds reproduces, whose clean smoothed AUROC is the clean cell's (the same noise), and
which PGD-L2 at ε = r on the same smoothed detector never beats (the bracket:
certified ≤ attacked). A detector that is not smoothed gets no certificate, with a warning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad_bench.harness.cli import main
from robustad_bench.harness.results import row_problems

BASES = {
    "patchcore": "{name: patchcore, backbone: resnet18, layers: [layer2], weights: random, input_size: 32}",
    "anomalydino": "{name: anomalydino, backbone: vit_tiny_patch16_224, weights: random, input_size: 32, shots: 1}",
    "zarnd": "{name: zarnd, backbone: resnet18, weights: random, input_size: 32}",
    "patchguard": "{name: patchguard, backbone: vit_tiny_patch16_224, weights: random, input_size: 32, feature_layer: 1, "
                  "hidden_dim: 32, epochs: 1, batch_size: 8, train_steps: 1}",
}
SMOOTHED = "\n".join(f"  - {{name: smoothed, label: {name}, sigma: 0.5, n: 16, base: {base}}}" for name, base in BASES.items())
SUITE = f"""name: certified-test
batch_size: 4
datasets:
  - {{name: textures, categories: [brick], image_size: 32, crop_size: 64, n_train: 4, n_test_normal: 3, n_test_anomalous: 3}}
detectors:
{SMOOTHED}
  - {{name: patchcore, label: plain, backbone: resnet18, layers: [layer2], weights: random, input_size: 32}}
attacks:
  - {{name: none}}
  - {{name: certify, eps: [0.25, 0.5], alpha: 0.01}}
  - {{name: pgd, norm: l2, eps: [0.25, 0.5], steps: 2}}
"""


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("certified")
    (tmp / "s.yaml").write_text(SUITE)
    assert main(["run", str(tmp / "s.yaml"), "--out", str(tmp / "o"), "--cache", str(tmp / "c"), "--no-progress"]) == 0
    return tmp / "o", [json.loads(line) for line in (tmp / "o" / "results.jsonl").read_text().splitlines()]


def test_each_smoothed_detector_has_recomputable_certified_rows_at_two_radii(certified_run):
    out, rows = certified_run
    assert all(r["status"] == "ok" for r in rows) and [p for r in rows for p in row_problems(r)] == []
    certified = [r for r in rows if r["attack_kind"] == "certificate"]
    assert sorted((r["detector"], r["eps"]) for r in certified) == sorted((d, e) for d in BASES for e in (0.25, 0.5))
    clean = {r["detector"]: r for r in rows if r["attack_kind"] == "none"}
    for row in certified:
        arrays = np.load(out / "cells" / row["cell_id"] / "scores.npz")
        labels, lower, upper = arrays["labels"], arrays["lower"], arrays["upper"]
        assert (lower <= arrays["scores"]).all() and (arrays["scores"] <= upper).all()
        worst = np.nan_to_num(np.where(labels == 1, lower, upper), posinf=1e300, neginf=-1e300)  # abstained: ±inf
        assert row["certificate"]["abstained"] == {"lower": int(np.isinf(lower).sum()), "upper": int(np.isinf(upper).sum()),
                                                   "images": len(labels)}
        assert row["metrics"]["certified_image_auroc"] == pytest.approx(roc_auc_score(labels, worst))
        assert row["metrics"]["smoothed_image_auroc"] == pytest.approx(clean[row["detector"]]["metrics"]["image_auroc"])
        cert = row["certificate"]
        assert (cert["sigma"], cert["n"], cert["alpha"], cert["radius"]) == (0.5, 16, 0.01, row["eps"])
        assert row["passes"]["forward"] == (16 * len(labels) if cert["draws"]["here"] else 0)  # the draws' cell counts them
        if "masks" in arrays:
            masks = arrays["masks"].astype(bool)
            pixels = np.where(masks, arrays["map_lower"], arrays["map_upper"]).ravel()
            assert row["metrics"]["certified_pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), pixels))


def test_the_bracket_holds_certified_at_most_attacked_for_every_detector_and_radius(certified_run):
    _, rows = certified_run
    attacked = {(r["detector"], r["eps"]): r["metrics"]["image_auroc"] for r in rows if r["attack"] == "pgd"}
    for row in (r for r in rows if r["attack_kind"] == "certificate"):
        assert row["metrics"]["certified_image_auroc"] <= attacked[row["detector"], row["eps"]], row["cell_id"]
        assert "certificate-violated" not in row["flags"]


def test_a_detector_that_is_not_smoothed_gets_no_certificate_and_a_warning(certified_run, tmp_path, caplog):
    _, rows = certified_run
    assert {r["attack"] for r in rows if r["detector"] == "plain"} == {"none", "pgd"}
    (tmp_path / "s.yaml").write_text(SUITE)
    assert main(["validate", str(tmp_path / "s.yaml")]) == 0
    assert "'plain' is not smoothed" in caplog.text


def test_the_board_shows_a_certified_column_beside_the_robust_one_at_each_radius(certified_run):
    out, rows = certified_run
    board = (out / "leaderboard.md").read_text()
    header = next(line for line in board.splitlines() if "L2 ε=0.25 · certified" in line)
    columns = [c.strip() for c in header.split("|")]
    assert columns.index("L2 ε=0.25 · certified") == columns.index("L2 ε=0.25 · robust") + 1
    assert "L2 ε=0.5 · certified" in columns
    line = next(row for row in board.splitlines() if row.startswith("|") and "| patchcore " in row)
    shown = [c.strip() for c in line.split("|")][columns.index("L2 ε=0.25 · certified")]
    value = next(r for r in rows if r["detector"] == "patchcore" and r["attack"] == "certify" and r["eps"] == 0.25)
    assert shown == f"{100 * value['metrics']['certified_image_auroc']:.1f}"
    assert "[certified]" in (out / "site" / "entries" / "patchcore" / "textures-curves.svg").read_text()


def test_one_set_of_draws_serves_both_radii_and_a_radius_alone_gets_the_same_bounds(certified_run, tmp_path):
    out, rows = certified_run
    certified = [r for r in rows if r["attack_kind"] == "certificate" and r["detector"] == "patchcore"]
    assert sorted(r["certificate"]["draws"]["here"] for r in certified) == [False, True]  # drawn once for the two radii
    assert sum(r["passes"]["forward"] for r in certified) == 16 * 6
    (tmp_path / "s.yaml").write_text(SUITE)
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
                 "--only", "patchcore.*certify*eps0.5*", "--no-progress"]) == 0
    alone = json.loads((tmp_path / "o" / "results.jsonl").read_text().splitlines()[0])
    assert alone["certificate"]["draws"] == {"here": True, "radii": [0.5]}
    together = next(r for r in certified if r["eps"] == 0.5)
    assert alone["cell_id"] == together["cell_id"] and alone["scores_sha256"] == together["scores_sha256"]
    mine, theirs = np.load(tmp_path / "o" / "cells" / alone["cell_id"] / "scores.npz"), np.load(out / "cells" / alone["cell_id"] / "scores.npz")
    assert all(np.array_equal(mine[k], theirs[k]) for k in ("lower", "upper", "map_lower", "map_upper", "scores"))
