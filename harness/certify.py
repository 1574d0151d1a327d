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

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import Tensor

from robustad_bench.adapters.smoothed import noisy_copies
from robustad_bench.core.errors import UserError

from .attacks.rng import image_seed
from .tasks import MASK_RULE, evaluation_maps, resized_maps

ABSTAINED = 1e30  # an abstained pixel bound in a saved map: −1e30 (lower), +1e30 (upper)


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
    return sorted_bounds(np.sort(samples, axis=-1), smoothing, radius, tests=tests)


def sorted_bounds(ordered: np.ndarray, smoothing: Smoothing, radius: float, *,
                  tests: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``percentile_bounds`` of samples already sorted along the last axis (sort once, bound
    at every radius)."""
    n = ordered.shape[-1]
    if n != smoothing.n:
        raise ValueError(f"{n} samples per value, the smoothing says n = {smoothing.n}")
    k_low, k_high = order_indices(n, smoothing.percentile, radius, smoothing.sigma, smoothing.alpha / tests)
    lower = ordered[..., k_low - 1] if k_low is not None else np.full(ordered.shape[:-1], -np.inf)
    upper = ordered[..., k_high - 1] if k_high is not None else np.full(ordered.shape[:-1], np.inf)
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
    values = np.where(positive, np.asarray(lower, np.float64).ravel(), np.asarray(upper, np.float64).ravel())
    values = np.nan_to_num(values, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    from scipy.stats import rankdata

    ranks = rankdata(values)  # ties get their mean rank: they count half, as above
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noisy_values(score: Callable[[Tensor], Tensor], x: Tensor, smoothing: Smoothing, *, seed: int,
                 images: Sequence[str | int]) -> Tensor:
    """(B, n, ...) base values ``score(x + noise)`` of any function (``score`` maps a
    (m, *x.shape[1:]) batch to (m, ...)), image b's noise from its own stream (cell seed, image
    id). The ``smoothed`` detector draws the same way, its stream seeded by the image's content."""
    with torch.no_grad():
        return torch.stack([torch.cat([score(copies) for copies in noisy_copies(x[b : b + 1], smoothing.sigma, smoothing.n,
                                                                              image_seed(seed, f"smoothing/{i}"))])
                            for b, i in enumerate(images)])


PIXEL_GUARANTEE = ("per pixel: each pixel's interval holds with probability ≥ 1 − α (not simultaneously over the "
                   "pixels); an evaluation pixel averages input pixels' bounds (bilinear or area weights ≥ 0)")


def certificate_cell(cell, fitted, *, thresholds, device, progress: bool = False, source=None,
                     batch_size: int | None = None, recall=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A ``certify`` cell (``evaluate_cell``'s signature): the smoothed detector's certified
    bounds at the radius ``eps`` for every clean test image, and the certified image and pixel
    AUROC; the bounds are saved so every number can be recomputed. The n noisy draws per image
    are made once per fitted detector and α for every radius of the group (``fitted.shared``:
    the runner lists them); the draws depend on the image alone, so the bounds are the same
    whichever cell made them. It makes no adversarial image: ``recall`` has nothing to take."""
    detector, point = fitted.detector, cell.attack.kwargs
    if not getattr(detector, "certifiable", False):
        raise UserError(f"{cell.detector.label!r} is not a smoothed detector: certify needs {{name: smoothed, base: ...}}",
                        key=cell.attack.key or "attacks")
    smoothing = Smoothing(detector.sigma, detector.n, detector.percentile, float(point.get("alpha", 0.001)))
    radius, start = cell.eps, time.perf_counter()
    drawn = fitted.shared.get(("certify", smoothing.alpha))
    here = drawn is None or radius not in drawn["bounds"]
    if here:
        radii = sorted({radius, *fitted.shared.get("certify_radii", {}).get(smoothing.alpha, ())})
        drawn = fitted.shared[("certify", smoothing.alpha)] = draw_bounds(fitted, smoothing, radii, device)
    bounds, labels, n_images = drawn["bounds"][radius], fitted.split.labels.astype(np.int64), len(fitted.split.labels)
    arrays = {"labels": labels, "scores": drawn["value"].astype(np.float32), "lower": bounds["lower"], "upper": bounds["upper"]}
    metrics = {"smoothed_image_auroc": certified_auroc(labels, drawn["value"], drawn["value"]),
               "certified_image_auroc": certified_auroc(labels, bounds["lower"], bounds["upper"]),
               "certified_pixel_auroc": None}
    if fitted.masks is not None:
        arrays |= {"maps": drawn["map"].astype(np.float16), "masks": fitted.masks.astype(np.uint8),
                   "map_lower": bounds["map_lower"], "map_upper": bounds["map_upper"]}
        metrics["certified_pixel_auroc"] = certified_pixel_auroc(fitted.masks, bounds["map_lower"], bounds["map_upper"])
    k_low, k_high = order_indices(smoothing.n, smoothing.percentile, radius, smoothing.sigma, smoothing.alpha)
    fields = {
        "metrics": metrics,
        "threshold": thresholds.metric, "threshold_rule": thresholds.rule,
        "attack_thresholds": {"image": thresholds.image, "pixel": thresholds.pixel},
        "pixel_evaluation": {"resolution": fitted.map_size, "mask_rule": MASK_RULE} if fitted.masks is not None else None,
        "threat": {"norm": "l2", "eps": radius},
        "certificate": {
            "sigma": smoothing.sigma, "n": smoothing.n, "n0": 0, "alpha": smoothing.alpha, "percentile": smoothing.percentile,
            "radius": radius, "ranks": {"lower": k_low, "upper": k_high},
            "confidence": "each image's interval holds with probability ≥ 1 − α at this radius (α/2 below, α/2 above); "
                          "not simultaneous over the images or the radii (Bonferroni: α × images × radii)",
            "pixel_guarantee": PIXEL_GUARANTEE if fitted.masks is not None else None,
            "abstained": {"lower": int(np.isinf(bounds["lower"]).sum()), "upper": int(np.isinf(bounds["upper"]).sum()),
                          "images": n_images},
            "draws": {"here": here, "radii": list(drawn["bounds"])},  # one set of draws served these radii
        },
        "seconds": round(time.perf_counter() - start, 3),
        "passes": {"forward": smoothing.n * n_images if here else 0, "gradient": 0},
        "perturbation": {"linf_max": 0.0, "l2_max": 0.0},
    }
    return fields, arrays


def draw_bounds(fitted, smoothing: Smoothing, radii: list[float], device) -> dict[str, Any]:
    """One pass of n noisy draws per clean test image: the smoothed score and map, and their
    certified bounds at each radius (maps at the evaluation resolution; bounds float32, not rounded)."""
    detector = fitted.detector.eval()
    parts: dict[Any, list[np.ndarray]] = defaultdict(list)
    with torch.no_grad():
        for image in fitted.split.test.split(1):
            noisy = detector.samples(image.to(device))  # (1, n), (1, n, H, W)
            scores = np.sort(noisy.score.double().cpu().numpy(), axis=-1)  # sorted once for every radius
            maps = np.sort(noisy.map.double().cpu().numpy().transpose(0, 2, 3, 1), axis=-1)  # (1, H, W, n)
            parts["value"].append(smoothed_value(scores, smoothing.percentile))
            parts["map"].append(evaluation_maps(torch.from_numpy(smoothed_value(maps, smoothing.percentile)), fitted.map_size))
            for radius in radii:
                lower, upper = sorted_bounds(scores, smoothing, radius)
                map_lower, map_upper = sorted_bounds(maps, smoothing, radius)
                parts[radius, "lower"].append(lower)
                parts[radius, "upper"].append(upper)
                parts[radius, "map_lower"].append(resized_maps(torch.from_numpy(finite(map_lower)), fitted.map_size).numpy())
                parts[radius, "map_upper"].append(resized_maps(torch.from_numpy(finite(map_upper)), fitted.map_size).numpy())
    joined = {key: np.concatenate(values) for key, values in parts.items()}
    bounds = {r: {kind: joined[r, kind] for kind in ("lower", "upper", "map_lower", "map_upper")} for r in radii}
    return {"value": joined["value"], "map": joined["map"], "bounds": bounds}


def finite(values: np.ndarray) -> np.ndarray:
    """±∞ (an abstained bound) as ±ABSTAINED, so that maps can be resized (a weighted mean of
    sentinels stays far beyond every score) and saved as float32."""
    return np.clip(np.asarray(values, np.float64), -ABSTAINED, ABSTAINED).astype(np.float32)
