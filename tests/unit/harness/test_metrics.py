"""Each metric against an independent computation (scikit-learn or a hand-worked example)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from robustad_bench.harness.metrics import (
    METRICS,
    aupro,
    best_f1_threshold,
    compute_metrics,
    f1,
    f1_max,
    gmean,
    image_ap,
    image_auroc,
    pixel_auroc,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40, int), np.ones(30, int)]
    scores = rng.normal(size=70) + 1.2 * labels
    return labels, scores


def test_image_auroc_and_ap_match_sklearn(scored):
    labels, scores = scored
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_auroc_ap_and_best_threshold_match_sklearn_with_ties():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = (rng.random(60) < 0.4).astype(int)
        scores = np.round(rng.normal(size=60) + labels, 1)  # many ties
        assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        f1s = np.divide(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1],
                        out=np.zeros(len(thresholds)), where=(precision[:-1] + recall[:-1]) > 0)
        assert best_f1_threshold(labels, scores) == pytest.approx((f1s.max(), thresholds[np.argmax(f1s)]), abs=1e-12)


def test_f1_max_is_best_over_every_threshold(scored):
    labels, scores = scored
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_max(labels, scores) == pytest.approx(brute, abs=1e-12)
    best, threshold = best_f1_threshold(labels, scores)
    assert f1_score(labels, scores >= threshold) == pytest.approx(best, abs=1e-12)


def test_f1_and_gmean_at_a_fixed_threshold(scored):
    labels, scores = scored
    t = 0.3
    assert f1(labels, scores, threshold=t) == pytest.approx(f1_score(labels, scores >= t), abs=1e-12)
    pred = scores >= t
    tpr = pred[labels == 1].mean()
    tnr = (~pred[labels == 0]).mean()
    assert gmean(labels, scores, threshold=t) == pytest.approx(np.sqrt(tpr * tnr), abs=1e-12)


def test_threshold_metrics_need_a_threshold(scored):
    labels, scores = scored
    assert f1(labels, scores) is None and gmean(labels, scores) is None


def test_one_class_gives_none_not_a_number():
    labels = np.zeros(5, int)
    assert image_auroc(labels, np.arange(5.0)) is None
    assert f1_max(labels, np.arange(5.0)) is None


def test_pixel_auroc_matches_sklearn_on_flattened_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 8, 8))
    masks[1, 2:5, 2:5] = 1
    masks[2, 0:2, :] = 1
    maps = rng.random((3, 8, 8)) + masks
    assert pixel_auroc(None, None, maps=maps, masks=masks) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )
    assert pixel_auroc(None, None, maps=maps, masks=None) is None


def test_aupro_hand_worked_example():
    # One 1x10 image: two regions {0,1} and {5}; normal pixels 2,3,4,6,7,8,9 (7 of them).
    masks = np.zeros((1, 1, 10))
    masks[0, 0, [0, 1, 5]] = 1
    maps = np.array([[[9, 3, 1, 1, 1, 8, 1, 7, 1, 1]]], dtype=float)
    # Threshold sweep: >=9: PRO=(1/2+0)/2=0.25, FPR=0; >=8: PRO=(0.5+1)/2=0.75, FPR=0;
    # >=7: FPR=1/7, PRO=0.75; >=3: FPR=1/7, PRO=1.0; >=1: FPR=1, PRO=1.
    # Curve (0,0)->(0,.25)->(0,.75)->(1/7,.75)->(1/7,1)->(0.3,1) (interpolated on 1/7..1).
    area = 0.75 * (1 / 7) + 1.0 * (0.3 - 1 / 7)
    assert aupro(None, None, maps=maps, masks=masks) == pytest.approx(area / 0.3, abs=1e-12)


def test_aupro_perfect_and_inverted_maps():
    masks = np.zeros((2, 16, 16))
    masks[0, 4:8, 4:8] = 1
    masks[1, 10:12, 1:15] = 1
    assert aupro(None, None, maps=masks.copy(), masks=masks) == pytest.approx(1.0)
    assert aupro(None, None, maps=-masks, masks=masks) == pytest.approx(0.0)


def test_compute_metrics_covers_the_registry(scored):
    labels, scores = scored
    out = compute_metrics(labels, scores, threshold=0.0)
    assert set(out) == set(METRICS.names())
    assert out["pixel_auroc"] is None and out["image_auroc"] is not None


def test_a_thin_defect_survives_the_evaluation_resolution():
    import torch

    from robustad_bench.harness.tasks import evaluation_maps, evaluation_masks

    mask = torch.zeros(1, 256, 256)
    mask[0, 100:180, 37] = 1  # a 1-pixel-wide scratch
    small = evaluation_masks(mask, 64)
    assert small.sum() == 20 and small[0, 25:45, 9].all()  # every covered pixel counts (any-rule)
    area = torch.nn.functional.interpolate(mask[:, None], size=(64, 64), mode="area")[:, 0] >= 0.5
    assert area.sum() == 0  # the old area-then-0.5 rule loses it entirely
    assert (evaluation_masks(mask, 256) == mask.numpy()).all()  # at the input size: unchanged
    maps = torch.rand(2, 32, 32)
    assert evaluation_maps(maps, 64).shape == (2, 64, 64) and evaluation_maps(maps, 32).dtype == np.float32
    assert np.array_equal(evaluation_maps(maps, 32), maps.half().float().numpy())  # what is saved (float16)
