"""The two tasks of a plan: fit one detector on one category, evaluate one cell with it.

``fit_state`` builds the fitted state and the clean test outputs once per
(detector, dataset, category, seed); every cell of that group then reuses both: the clean
outputs give the clean threshold, and a cell whose attack leaves the images unchanged
reuses them instead of recomputing (DESIGN §7).
"""

from __future__ import annotations

import inspect
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import ATTACKS
from .calibration import attacker_calibrator, calibration_metrics
from .datasets import Split
from .grid import Cell
from .metrics import compute_metrics


@contextmanager
def seeded(seed: int):
    """Seed torch's global RNG for code we don't control (timm's init), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class CountingDetector(nn.Module):
    """Wraps a detector to count the images it forwards, with and without input gradient."""

    def __init__(self, detector: nn.Module, bar: tqdm | None = None):
        super().__init__()
        self.detector = detector
        self.bar = bar
        self.forward_passes = 0
        self.gradient_passes = 0

    def _count(self, x: Tensor) -> None:
        self.forward_passes += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            self.gradient_passes += x.shape[0]
        if self.bar is not None:
            self.bar.update(x.shape[0])

    def forward(self, x: Tensor):
        self._count(x)
        return self.detector(x)

    def features(self, x: Tensor) -> Tensor:  # surrogate attacks run the feature extractor only
        self._count(x)
        return self.detector.features(x)


def downsample(maps: Tensor, size: int) -> Tensor:
    """(B, H, W) → (B, size, size) by area averaging; maps already smaller are kept."""
    if maps.shape[-1] <= size and maps.shape[-2] <= size:
        return maps
    return F.interpolate(maps[:, None], size=(size, size), mode="area")[:, 0]


@dataclass
class Fitted:
    detector: nn.Module
    split: Split
    clean_scores: np.ndarray  # (M,)
    clean_maps: np.ndarray  # (M, m, m) downsampled
    masks: np.ndarray | None  # (M, m, m) downsampled, binary
    fit_seconds: float


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, slice(start, min(start + size, n))


def score_images(detector: nn.Module, images: Tensor, *, batch_size: int, map_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    with torch.no_grad():
        for _, sl in _batches(images.shape[0], batch_size):
            out = detector(images[sl].to(device))
            scores.append(out.score.float().cpu())
            maps.append(downsample(out.map.float(), map_size).cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def fit_state(detector: nn.Module, split: Split, *, seed: int, batch_size: int, map_size: int, device) -> dict[str, Any]:
    """Fit and score the clean test set; the returned dict is the cached fit artifact."""
    start = time.perf_counter()
    detector.fit(split.train.to(device), seed=seed)
    fit_seconds = time.perf_counter() - start
    scores, maps = score_images(detector, split.test, batch_size=batch_size, map_size=map_size, device=device)
    state = {k: v.cpu() for k, v in detector.state_dict().items()}
    return {"state_dict": state, "clean_scores": torch.from_numpy(scores), "clean_maps": torch.from_numpy(maps), "fit_seconds": fit_seconds}


def downsampled_masks(split: Split, map_size: int) -> np.ndarray | None:
    if split.masks is None:
        return None
    return (downsample(split.masks.float(), map_size) >= 0.5).float().numpy()


def batch_seed(seed: int, batch: int) -> int:
    return seed * 1_000_003 + batch


def evaluate_cell(cell: Cell, fitted: Fitted, *, threshold: float | None, device, progress: bool = False,
                  source: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Attack the test set batch by batch, score the result; returns (row fields, arrays)."""
    split = fitted.split
    labels = torch.from_numpy(split.labels)
    attack = ATTACKS.get(cell.attack.name)
    wants = inspect.signature(attack).parameters  # context an attack may ask the harness for
    context = {"threshold": threshold} if "threshold" in wants else {}
    n = split.test.shape[0]
    # counts every image the detector forwards: the attack's step rate, in images per second
    bar = tqdm(desc="  forward passes", unit="img", leave=False, disable=not progress, file=sys.stderr)
    counting = CountingDetector(fitted.detector, bar)
    source_counting = CountingDetector(source, bar) if source is not None else None
    if "source_detector" in wants:
        context["source_detector"] = source_counting
    if "calibrator" in wants and cell.attack.kwargs.get("entropy_weight"):
        context["calibrator"] = attacker_calibrator(split.labels, fitted.clean_scores)
    scores, maps, linf, l2 = fitted.clean_scores.copy(), fitted.clean_maps.copy(), np.zeros(n), np.zeros(n)
    start, perturbed = time.perf_counter(), False
    for b, sl in _batches(n, cell.batch_size):
        x = split.test[sl].to(device)
        masks = split.masks[sl].to(device) if split.masks is not None else None
        x_adv = attack(counting, x, labels[sl].to(device), masks, seed=batch_seed(cell.seed, b), **context, **cell.attack.kwargs)
        if x_adv is x:  # images unchanged: the clean outputs stand
            continue
        perturbed = True
        delta = (x_adv - x).detach().flatten(1)
        linf[sl], l2[sl] = delta.abs().amax(1).cpu().numpy(), delta.norm(dim=1).cpu().numpy()
        with torch.no_grad():
            out = fitted.detector(x_adv.detach())
        scores[sl] = out.score.float().cpu().numpy()
        maps[sl] = downsample(out.map.float(), cell.map_size).cpu().numpy()
    seconds = time.perf_counter() - start
    bar.close()
    arrays = {"labels": split.labels.astype(np.int64), "scores": scores.astype(np.float32)}
    if fitted.masks is not None:
        arrays |= {"maps": maps.astype(np.float32), "masks": fitted.masks.astype(np.uint8)}
    if perturbed:  # keep the clean scores beside the adversarial ones they are compared with
        arrays["clean_scores"] = fitted.clean_scores.astype(np.float32)
    metrics = compute_metrics(arrays["labels"], arrays["scores"], maps=arrays.get("maps"), masks=arrays.get("masks"), threshold=threshold)
    calibration, posteriors = calibration_metrics(arrays["labels"], fitted.clean_scores.astype(np.float64),
                                                  scores.astype(np.float64), perturbed=perturbed, seed=cell.seed)
    metrics |= calibration
    arrays |= posteriors
    fields = {
        "metrics": metrics,
        "threshold": threshold,
        "seconds": round(seconds, 3),
        "passes": {"forward": counting.forward_passes, "gradient": counting.gradient_passes}
        | ({"source_forward": source_counting.forward_passes, "source_gradient": source_counting.gradient_passes}
           if source_counting is not None else {}),
        "perturbation": {"linf_max": float(linf.max()), "l2_max": float(l2.max())},
    }
    return fields, arrays
