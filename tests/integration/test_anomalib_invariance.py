"""anomalib's recent models (Patchflow, GeneralAD: white-box through an inert ``no_grad``;
RAD: score-only) through the whole harness: every cell's per-image scores and maps are
bit-identical at batch size 2 and 6 (the whole test set) and with the detectors and attacks
listed in the opposite order (DESIGN §2: a number must not depend on how it was computed)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from robustad_bench.harness.cli import main

pytest.importorskip("anomalib")

SUITE = {
    "name": "invariance",
    "batch_size": 2,
    "datasets": [{"name": "textures", "categories": ["brick"], "image_size": 64, "crop_size": 96, "n_train": 4,
                  "n_test_normal": 3, "n_test_anomalous": 3}],
    "detectors": [
        {"name": "anomalib_patchflow", "backbone": "resnet18", "input_size": 64, "epochs": 1, "flow_feature_dim": 16,
         "flow_hidden_dim": 16, "label": "flow"},
        {"name": "anomalib_general_ad", "backbone": "vit_tiny_patch16_224", "layers": [1, 2], "hidden_dim": 64,
         "input_size": 64, "epochs": 2, "top_k": 2, "label": "gad"},
        {"name": "anomalib_rad", "backbone": "vit_tiny_patch16_224", "input_size": 64, "k_image": 2, "label": "rad"},
    ],
    "attacks": [{"name": "none"}, {"name": "pgd", "eps": "8/255", "steps": 2, "random_start": True},
                {"name": "square", "eps": "8/255", "steps": 3}],
}


def run(tmp_path, name: str, suite: dict) -> dict[str, dict[str, np.ndarray]]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    out = tmp_path / name
    assert main(["run", str(path), "--out", str(out), "--cache", str(tmp_path / f"cache-{name}"), "--no-progress"]) == 0
    return {cell.name: dict(np.load(cell / "scores.npz")) for cell in sorted((out / "cells").iterdir())}


def test_scores_and_maps_do_not_depend_on_batch_size_or_cell_order(tmp_path):
    first = run(tmp_path, "batch2", SUITE)
    other = {**SUITE, "batch_size": 6, "detectors": SUITE["detectors"][::-1], "attacks": SUITE["attacks"][::-1]}
    second = run(tmp_path, "batch6-reversed", other)
    assert sorted(first) == sorted(second) and len(first) == 3 * 3 - 1  # RAD is score-only: no PGD cell
    for cell, arrays in first.items():
        for key in ("scores", "maps"):
            assert np.array_equal(arrays[key], second[cell][key]), (cell, key)
