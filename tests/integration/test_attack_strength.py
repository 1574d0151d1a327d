"""Strength per pass on a real detector (PatchCore, random-init ResNet-18, embedded textures):
A³ is about budget, so it is compared with PGD at the same number of gradient passes."""

from __future__ import annotations

import math

import torch

from robustad_bench.harness.attacks import Objective, run_attack
from robustad_bench.harness.tasks import CountingDetector


def test_a3_beats_pgd_at_equal_gradient_passes(fit_on_textures):
    detector, split = fit_on_textures("patchcore", backbone="resnet18", input_size=64, blur_sigma=1.0)
    x, labels = split.test, torch.from_numpy(split.labels)
    common = {"eps": 2 / 255, "threshold": 0.0, "pixel_threshold": 0.0}
    counted = CountingDetector(detector)
    a3 = run_attack("a3", counted, x, labels, **common)
    steps = math.ceil(counted.gradient_passes / len(x))  # PGD gets at least A³'s budget
    assert steps < 20 * 5  # A³'s discarding spent less than its full budget
    pgd = run_attack("pgd", detector, x, labels, steps=steps, **common)
    objective = Objective(detector, labels, None, "detection")
    assert objective(a3).mean() >= objective(pgd).mean()
