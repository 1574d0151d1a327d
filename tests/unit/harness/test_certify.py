"""Certified bounds of percentile smoothing (``harness/certify.py``): a linear detector's
analytic bounds, a brute-force worst case of a 2-pixel detector, the confidence the order
statistics promise, batch invariance, and the certified AUROCs against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from robustad_bench.harness.certify import (
    Smoothing,
    certified_auroc,
    certified_pixel_auroc,
    noisy_values,
    order_indices,
    percentile_bounds,
    shifted_percentiles,
    smoothed_value,
)


def linear(w: torch.Tensor):
    return lambda x: x.flatten(1) @ w


@pytest.mark.parametrize("radius", [0.0, 0.25, 0.5])
def test_a_linear_detectors_bounds_contain_the_analytic_ones_within_monte_carlo_error(radius):
    """s(x) = w·x: s(x + noise) ~ N(w·x, σ²‖w‖²), so h_p(x) = w·x + σ‖w‖Φ⁻¹(p) and the worst
    case over the L2 ball, h_p(x) ∓ r‖w‖, is exactly h_{p∓}(x). At α = 1e-6 no image of 40
    may miss (at 1e-3 about one in a thousand does, as promised)."""
    torch.manual_seed(0)
    smoothing = Smoothing(sigma=0.5, n=2000, percentile=0.5, alpha=1e-6)
    w, x = torch.randn(12, dtype=torch.float64), torch.rand(40, 12, dtype=torch.float64)
    samples = noisy_values(linear(w), x, smoothing, seed=0, images=range(40)).numpy()
    lower, upper = percentile_bounds(samples, smoothing, radius)
    scale = smoothing.sigma * float(w.norm())
    centre = (x @ w).numpy() + scale * norm.ppf(smoothing.percentile)
    exact_low, exact_high = centre - radius * float(w.norm()), centre + radius * float(w.norm())
    assert (lower <= exact_low).all() and (upper >= exact_high).all()
    assert (exact_low - lower).max() < 0.35 * scale and (upper - exact_high).max() < 0.35 * scale  # tight: n = 2000
    assert np.allclose(smoothed_value(samples, 0.5), centre, atol=0.15 * scale)


def test_the_certificate_is_never_beaten_by_a_brute_force_search_of_the_ball():
    """A nonlinear 2-pixel detector: its smoothed score h_p(x + δ), computed with 50,000 common
    noise draws at every δ of a fine polar grid of the L2 ball, stays inside [L(r), U(r)]."""
    smoothing = Smoothing(sigma=0.4, n=1000, percentile=0.5, alpha=0.001)

    def score(x):
        return torch.sin(3 * x[:, 0]) + x[:, 1] ** 2 + 0.5 * torch.relu(x[:, 0] - x[:, 1])

    points = torch.tensor([[0.2, 0.7], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    samples = noisy_values(score, points, smoothing, seed=3, images=range(3)).numpy()
    noise = torch.randn(50_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * smoothing.sigma
    angles = torch.linspace(0, 2 * np.pi, 37, dtype=torch.float64)[:-1]
    directions = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # (36, 2)
    for radius in (0.2, 0.4):
        lower, upper = percentile_bounds(samples, smoothing, radius)
        for i, x in enumerate(points):
            smoothed = [torch.quantile(score(x + rho * d + noise), smoothing.percentile).item()
                        for rho in torch.linspace(0, radius, 6, dtype=torch.float64) for d in directions]
            worst_low, worst_high = min(smoothed), max(smoothed)
            assert lower[i] <= worst_low and worst_high <= upper[i], (radius, i, lower[i], worst_low, worst_high, upper[i])


def test_the_order_statistics_keep_their_promised_confidence():
    """Over 4,000 sets of n draws from N(0, 1), the lower bound exceeds the true p−-quantile in
    at most α/2 of them (plus sampling slack), and the upper bound falls below the p+-quantile
    as rarely; at α = 0.2, n = 50."""
    smoothing = Smoothing(sigma=1.0, n=50, percentile=0.5, alpha=0.2)
    p_minus, p_plus = shifted_percentiles(0.5, 0.3, 1.0)
    draws = np.random.default_rng(0).standard_normal((4000, 50))
    lower, upper = percentile_bounds(draws, smoothing, 0.3)
    assert (lower > norm.ppf(p_minus)).mean() <= 0.1 + 0.015
    assert (upper < norm.ppf(p_plus)).mean() <= 0.1 + 0.015
    assert (lower > norm.ppf(p_minus)).mean() > 0.05  # and not vacuous: the bound is near its promise


def test_too_few_samples_for_the_radius_abstain():
    k_low, k_high = order_indices(10, 0.5, 2.0, 0.25, 0.001)  # p− ≈ 1e-15: no order statistic bounds it
    assert k_low is None and k_high is None
    lower, upper = percentile_bounds(np.zeros((3, 10)), Smoothing(0.25, 10), 2.0)
    assert np.isneginf(lower).all() and np.isposinf(upper).all()
    assert certified_auroc(np.array([0, 1, 1]), lower, upper) == 0.0


def test_bounds_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    smoothing = Smoothing(sigma=0.25, n=100)
    w, x = torch.randn(48), torch.rand(7, 3, 4, 4)
    names = [f"img{i}" for i in range(7)]
    together = noisy_values(linear(w), x, smoothing, seed=5, images=names)
    first = noisy_values(linear(w), x[:3], smoothing, seed=5, images=names[:3])
    assert torch.equal(first, together[:3])
    assert not torch.equal(noisy_values(linear(w), x[:3], smoothing, seed=6, images=names[:3]), first)  # seeded


def test_certified_aurocs_equal_sklearn_on_the_bounds():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30), np.ones(20)].astype(int)
    lower, upper = rng.normal(size=50) + labels, rng.normal(size=50) + labels + 0.5
    mixed = np.where(labels == 1, lower, upper)
    assert certified_auroc(labels, lower, upper) == pytest.approx(roc_auc_score(labels, mixed))
    masks = rng.random((4, 8, 8)) < 0.2
    low, high = rng.normal(size=(4, 8, 8)) + masks, rng.normal(size=(4, 8, 8)) + masks + 0.3
    expected = roc_auc_score(masks.ravel(), np.where(masks, low, high).ravel())
    assert certified_pixel_auroc(masks, low, high) == pytest.approx(expected)
