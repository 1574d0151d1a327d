"""``threshold: normal-quantile:Q``: the F1 / G-mean threshold from held-out normal train
images (no test labels), recorded in the row and recomputable from scores.npz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustad_bench.harness.cli import main
from robustad_bench.harness.datasets import Split
from robustad_bench.harness.metrics import best_f1_threshold, f1
from robustad_bench.harness.results import row_problems
from robustad_bench.harness.tasks import hold_out

SUITE = """\
name: thr
{rule}
map_size: 32
batch_size: 8
datasets: [{{name: textures, categories: [brick], image_size: 48, crop_size: 64, n_train: 10, n_test_normal: 4, n_test_anomalous: 4}}]
detectors: [{{name: patchcore, backbone: resnet18, weights: random, input_size: 48}}]
attacks: [{{name: none}}]
"""


def run(tmp_path, rule: str) -> tuple[dict, dict]:
    suite = tmp_path / f"{abs(hash(rule))}.yaml"
    suite.write_text(SUITE.format(rule=rule))
    out = tmp_path / f"out{abs(hash(rule))}"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert_valid_row(row)
    return row, dict(np.load(out / "cells" / row["cell_id"] / "scores.npz"))


def assert_valid_row(row: dict) -> None:
    """The row as docs/results.md and the shipped JSON Schema describe it."""
    assert row_problems(row) == []


def test_normal_quantile_threshold_uses_held_out_normals_only(tmp_path):
    oracle, oracle_arrays = run(tmp_path, "threshold: oracle")
    row, arrays = run(tmp_path, "threshold: normal-quantile:0.9\nholdout: 0.3")
    assert oracle["threshold_rule"].startswith("oracle") and oracle["n_train"] == 10 and oracle["holdout"] is None
    assert row["threshold_rule"].startswith("normal-quantile") and row["holdout"] == {"fraction": 0.3, "images": 3}
    assert row["n_train"] == 7  # the held-out images were not fitted on
    held = arrays["holdout_scores"]
    assert held.shape == (3,) and row["threshold"] == pytest.approx(float(np.quantile(held, 0.9)), rel=1e-6)
    # the F1 in the row is the F1 at that threshold, recomputed from the saved scores
    assert row["metrics"]["f1"] == pytest.approx(f1(arrays["labels"], arrays["scores"], threshold=row["threshold"]))
    # and it is not the oracle's: that one is the F1-max threshold of the test labels
    assert oracle["threshold"] == pytest.approx(best_f1_threshold(oracle_arrays["labels"], oracle_arrays["scores"])[1])
    assert row["threshold"] != pytest.approx(oracle["threshold"])


def test_hold_out_is_seeded_disjoint_and_leaves_images_to_fit():
    import torch

    train = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    split = Split(train, train[:2], np.array([0, 1]), None, ["a", "b"])
    a, b, c = hold_out(split, 0.25, seed=0), hold_out(split, 0.25, seed=0), hold_out(split, 0.25, seed=1)
    assert torch.equal(a.holdout, b.holdout) and not torch.equal(a.holdout, c.holdout)
    kept, held = set(a.train[:, 0, 0, 0].tolist()), set(a.holdout[:, 0, 0, 0].tolist())
    assert len(held) == 5 and not kept & held and len(kept | held) == 20
    assert hold_out(split, 0.0, seed=0) is split


@pytest.mark.parametrize("text, message", [
    ("threshold: normal-quantile:1.5", "normal-quantile:Q with 0 < Q < 1"),
    ("threshold: median", "must be oracle or normal-quantile"),
    ("holdout: 0.2", "only used with threshold: normal-quantile"),
    ("threshold: normal-quantile:0.9\nholdout: 1", "a fraction in (0, 1)"),
])
def test_bad_threshold_rules_exit_2(text, message, tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE.format(rule=text))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(suite) in err
