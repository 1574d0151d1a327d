"""Calibration: ECE by hand, Platt beats raw, cross-fitting never sees the scored item,
entropy peaks at 0.5, and the metrics of a cell."""

from __future__ import annotations

import numpy as np
import pytest

from robustad_bench.harness import calibration
from robustad_bench.harness.calibration import (
    CALIBRATORS,
    cross_fit,
    ece,
    entropy,
    minmax,
    posterior_arrays,
)
from robustad_bench.harness.metrics import compute_metrics


def test_ece_hand_worked_example():
    # 3 bins: [0, 1/3) holds p = 0.1, 0.2 (labels 0, 1); [2/3, 1] holds p = 0.9, 0.8 (labels 1, 1)
    probs, labels = np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 1, 1, 1])
    # bin 1: |0.5 − 0.15| = 0.35, weight 1/2; bin 3: |1 − 0.85| = 0.15, weight 1/2 → 0.25
    assert ece(probs, labels, bins=3) == pytest.approx(0.25)
    assert ece(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0  # perfectly confident and right


def separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)
    scores = np.where(labels == 1, 5.0, 3.0) + rng.normal(0, 0.5, n)  # raw scale far from [0,1] probabilities
    return scores, labels


@pytest.mark.parametrize("name", ["platt", "temperature", "isotonic"])
def test_calibrators_beat_the_raw_score_on_separable_data(name):
    scores, labels = separable()
    (posterior,) = cross_fit(name, scores, labels, [])[:1]
    assert ece(posterior, labels) < ece(minmax(scores, scores), labels)


def test_cross_fitting_never_fits_on_the_scored_item(monkeypatch):
    scores, labels = separable(50)
    seen = []

    class Probe:  # records the scores each fold is fitted on, predicts a fold-specific constant
        def fit(self, s, y):
            self.fitted_on = set(s.tolist())
            seen.append(self.fitted_on)
            return self

        def predict(self, s):
            assert not set(s.tolist()) & self.fitted_on, "an item was scored by a model fitted on it"
            return np.full(len(s), 0.5)

    monkeypatch.setitem(CALIBRATORS._entries, "probe", Probe)
    cross_fit("probe", scores, labels, [scores + 100.0])
    assert len(seen) == calibration.FOLDS
    assert all(len(s) == 40 for s in seen)  # each fit leaves exactly one fold of 10 out


def test_entropy_is_maximal_at_one_half():
    p = np.linspace(0, 1, 101)
    h = entropy(p)
    assert h.argmax() == 50 and h[50] == pytest.approx(1.0) and h[0] == pytest.approx(0.0, abs=1e-9)


def cell_metrics(labels, clean, scores, *, perturbed):
    """The calibration columns of a cell, computed as every metric is (``compute_metrics``)."""
    return compute_metrics(labels, scores, clean=clean, perturbed=perturbed)


def test_cell_metrics_flag_attacks_that_push_scores_towards_the_boundary():
    clean, labels = separable()
    boundary = np.full_like(clean, 4.0)  # attacked scores land between the classes: uncertain
    metrics, arrays = cell_metrics(labels, clean, boundary, perturbed=True), posterior_arrays(labels, clean, boundary)
    assert metrics["ece_bins"] == 15
    assert metrics["entropy_adv"] > metrics["entropy_clean"]
    assert metrics["flag_auroc"] > 0.9
    assert arrays["posterior_platt"].shape == clean.shape
    clean_metrics = cell_metrics(labels, clean, clean, perturbed=False)
    assert clean_metrics["entropy_adv"] is None and clean_metrics["flag_auroc"] is None
    assert clean_metrics["ece_platt"] < clean_metrics["ece_raw"]
    assert clean_metrics["f1_platt"] > 0.9 and clean_metrics["gmean_platt"] > 0.9  # separable: P = 0.5 splits well
    single = cell_metrics(np.zeros(5, int), clean[:5], clean[:5], perturbed=False)
    assert single["ece_platt"] is None and single["ece_raw"] is not None
