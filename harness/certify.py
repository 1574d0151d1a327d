"""Certified bounds for smoothed anomaly scores and maps: percentile (median) smoothing
(Chiang et al., NeurIPS 2020, "Detection as Regression: Certified Object Detection by Median
Smoothing"), with Gaussian noise as in randomized smoothing (Cohen et al., ICML 2019).

The smoothed score of an image x is the percentile p of the base score under noise,
    h_p(x) = sup{ y : P(s(x + N(0, σ²I)) ≤ y) ≤ p },
and for every perturbation δ with ‖δ‖₂ ≤ r (Chiang et al., Theorem 1)
    h_{p−}(x) ≤ h_p(x + δ) ≤ h_{p+}(x),   p± = Φ(Φ⁻¹(p) ± r/σ).
From n noisy scores y₍₁₎ ≤ … ≤ y₍ₙ₎ of x, the order statistic y₍k₎ is a lower bound of
h_{p−}(x) with probability ≥ P(Bin(n, p−) ≥ k), and y₍k'₎ an upper bound of h_{p+}(x) with
probability ≥ P(Bin(n, p+) ≤ k' − 1) (an exact Clopper–Pearson-type argument: the count of
noisy scores at or below a quantile is binomial). Each side takes α/2, so an image's interval
[L(r), U(r)] holds with probability ≥ 1 − α — per image and radius; ``simultaneous`` splits α
over the images too (Bonferroni), so that every interval of the set holds at once. Where no
order statistic reaches the confidence (n too small for the radius), the bound abstains: −∞
(lower) or +∞ (upper).

Certified image AUROC(r): the AUROC with every anomalous image at its lower bound and every
normal image at its upper bound — no perturbation of radius r (one per image) can bring the
smoothed detector's AUROC below it, at the stated confidence. The same bounds per pixel give
the certified pixel AUROC (per-pixel confidence, or Bonferroni over the pixels too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import Tensor

from .attacks.rng import image_seed

NOISE_CHUNK = 64  # noisy copies of one image forwarded together (fixed: the draws must not depend on it)


@dataclass(frozen=True)
class Smoothing:
    sigma: float  # noise standard deviation, in [0, 1] pixel units
    n: int  # noise samples per image
    percentile: float = 0.5  # p: the median by default
    alpha: float = 0.001  # 1 − confidence, per image and radius (both sides together)

    def __post_init__(self):
        if not (self.sigma > 0 and self.n >= 1 and 0 < self.percentile < 1 and 0 < self.alpha < 1):
            raise ValueError(f"smoothing needs sigma > 0, n ≥ 1, 0 < percentile < 1 and 0 < alpha < 1, got {self}")


def shifted_percentiles(percentile: float, radius: float, sigma: float) -> tuple[float, float]:
    """(p−, p+) = Φ(Φ⁻¹(p) ∓ r/σ)."""
    z = norm.ppf(percentile)
    return float(norm.cdf(z - radius / sigma)), float(norm.cdf(z + radius / sigma))


def order_indices(n: int, percentile: float, radius: float, sigma: float, alpha: float) -> tuple[int | None, int | None]:
    """1-based ranks (k, k') of the order statistics that bound h_{p−} from below and h_{p+}
    from above, each with probability ≥ 1 − α/2; None where none does (the bound abstains)."""
    p_minus, p_plus = shifted_percentiles(percentile, radius, sigma)
    ks = np.arange(1, n + 1)
    lower_ok = binom.sf(ks - 1, n, p_minus) >= 1 - alpha / 2  # P(Bin(n, p−) ≥ k), decreasing in k
    upper_ok = binom.cdf(ks - 1, n, p_plus) >= 1 - alpha / 2  # P(Bin(n, p+) ≤ k − 1), increasing in k
    k_low = int(ks[lower_ok].max()) if lower_ok.any() else None
    k_high = int(ks[upper_ok].min()) if upper_ok.any() else None
    return k_low, k_high


def percentile_bounds(samples: np.ndarray, smoothing: Smoothing, radius: float, *,
                      tests: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Certified (lower, upper) of the smoothed value at radius ``radius`` from ``samples``
    (..., n) of the base value under noise; α is split over ``tests`` intervals (Bonferroni)."""
    n = samples.shape[-1]
    if n != smoothing.n:
        raise ValueError(f"{n} samples per value, the smoothing says n = {smoothing.n}")
    k_low, k_high = order_indices(n, smoothing.percentile, radius, smoothing.sigma, smoothing.alpha / tests)
    ordered = np.sort(samples, axis=-1)
    lower = ordered[..., k_low - 1] if k_low is not None else np.full(samples.shape[:-1], -np.inf)
    upper = ordered[..., k_high - 1] if k_high is not None else np.full(samples.shape[:-1], np.inf)
    return np.asarray(lower, np.float64), np.asarray(upper, np.float64)


def smoothed_value(samples: np.ndarray, percentile: float) -> np.ndarray:
    """The empirical percentile: the ⌈n·p⌉-th order statistic of the samples (..., n)."""
    n = samples.shape[-1]
    k = max(1, int(np.ceil(n * percentile)))
    return np.partition(samples, k - 1, axis=-1)[..., k - 1].astype(np.float64)


def certified_auroc(labels: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """AUROC with anomalous images (label 1) at ``lower`` and normal ones at ``upper``
    (abstentions at ±∞ lose every comparison they enter; ties count half)."""
    labels = np.asarray(labels)
    anomalous, normal = np.asarray(lower)[labels == 1], np.asarray(upper)[labels == 0]
    if anomalous.size == 0 or normal.size == 0:
        return float("nan")
    greater = (anomalous[:, None] > normal[None, :]).sum()
    ties = (anomalous[:, None] == normal[None, :]).sum()
    return float((greater + 0.5 * ties) / (anomalous.size * normal.size))


def certified_pixel_auroc(masks: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The pixel-level counterpart: anomalous pixels at their lower bound, normal ones at their
    upper bound, over all pixels of all images (a rank computation: pixels are many)."""
    positive = np.asarray(masks).astype(bool).ravel()
    if positive.all() or not positive.any():
        return float("nan")
    values = np.where(positive, np.asarray(lower).ravel(), np.asarray(upper).ravel())
    values = np.nan_to_num(values, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    from scipy.stats import rankdata

    ranks = rankdata(values)  # ties get their mean rank: they count half, as above
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noisy_values(score: Callable[[Tensor], Tensor], x: Tensor, smoothing: Smoothing, *, seed: int,
                 images: Sequence[str | int]) -> Tensor:
    """(B, n, ...) base values ``score(x + noise)`` (``score`` maps a (m, *x.shape[1:]) batch to
    (m, ...)): image b's n noise draws come from its own stream (cell seed, image id), drawn
    ``NOISE_CHUNK`` at a time whatever the batch, so a value depends on the image only."""
    generators = [torch.Generator(device=x.device).manual_seed(image_seed(seed, f"smoothing/{i}")) for i in images]
    out = []
    for b in range(x.shape[0]):
        values = []
        for start in range(0, smoothing.n, NOISE_CHUNK):
            m = min(NOISE_CHUNK, smoothing.n - start)
            noise = torch.randn((m, *x.shape[1:]), generator=generators[b], device=x.device) * smoothing.sigma
            with torch.no_grad():
                values.append(score(x[b : b + 1] + noise))
        out.append(torch.cat(values))
    return torch.stack(out)
