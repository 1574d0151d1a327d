"""Our APGD and Square against the official AutoAttack code (``pyautoattack``), the field's
reference, on real detectors and the embedded textures: the detection objective through
the two-logit wrapper, same ε, steps and restarts (APGD-CE in its ``best_loss`` mode).

Ours must be at least as strong: mean per-image objective ≥ official − 1e-3 and image
AUROC ≤ official + 0.01. (Official Square stops searching an image once it crosses the
threshold; ours keeps pushing, which only helps AUROC.)
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from robustad_bench.harness.attacks import Objective, run_attack
from robustad_bench.harness.tasks import clean_thresholds

DETECTORS = {
    "patchcore": {"backbone": "resnet18", "input_size": 64, "blur_sigma": 1.0},
    "patchguard": {"backbone": "vit_tiny_patch16_224", "input_size": 64, "epochs": 1, "batch_size": 8,
                   "train_steps": 1, "hidden_dim": 64},
}
ATTACKS = {"apgd": {"eps": 2 / 255, "steps": 20}, "square": {"eps": 4 / 255, "steps": 150}}


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request, fit_on_textures):
    detector, split = fit_on_textures(request.param, **DETECTORS[request.param])
    x, labels = split.test, torch.from_numpy(split.labels)
    with torch.no_grad():
        clean = detector(x)
    threshold = clean_thresholds(split.labels, clean.score.numpy(), clean.map.numpy(), None).image
    return request.param, detector, x, labels, threshold


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_ours_is_at_least_as_strong_as_the_official_code(fitted, attack):
    name, detector, x, labels, threshold = fitted
    kwargs = {**ATTACKS[attack], "threshold": threshold, "seed": 0}
    ours = run_attack(attack, detector, x, labels, **kwargs)
    official = run_attack(attack, detector, x, labels, impl="official", **kwargs)
    objective = Objective(detector, labels, None, "detection")
    with torch.no_grad():
        auroc = {k: roc_auc_score(labels.numpy(), detector(adv).score.numpy()) for k, adv in (("ours", ours), ("official", official))}
    for adv in (ours, official):
        assert (adv - x).abs().max() <= kwargs["eps"] + 1e-6
    assert objective(official).mean() > objective(x).mean()  # the reference path did attack
    assert objective(ours).mean() >= objective(official).mean() - 1e-3, (name, attack)
    assert auroc["ours"] <= auroc["official"] + 0.01, (name, attack, auroc)
