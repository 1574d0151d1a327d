"""The two tasks of a plan: fit one detector on one category, evaluate one cell with it.

``fit_state`` builds the fitted state and the clean test outputs once per
(detector, dataset, category, seed); every cell of that group then reuses both: the clean
outputs give the clean threshold, and a cell whose attack leaves the images unchanged
reuses them instead of recomputing (DESIGN §7).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustad_bench.core.errors import UserError

from .attacks import CellData, Context, prepare_attack
from .attacks.recall import Recall, cell_call
from .calibration import attacker_calibrator, posterior_arrays
from .datasets import Split
from .datasets.base import resize_mask
from .grid import Cell
from .metrics import best_f1_threshold, compute_metrics


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


def search_totals(detector: nn.Module, device) -> dict[str, Any] | None:
    """The detector's memory-bank searches so far, summed over its banks, and the candidate
    pass's format on ``device`` (None: no bank)."""
    from robustad_bench.adapters.exact_search import SearchStats
    from robustad_bench.adapters.knn import MemoryBank

    banks = [m for m in detector.modules() if isinstance(m, MemoryBank)]
    if not banks:
        return None
    totals = SearchStats()
    for bank in banks:
        totals.add(bank.stats)
    return {"precision": banks[0].candidate_format(torch.device(device))} | totals.as_dict()


def searched_since(detector: nn.Module, before: dict[str, Any] | None, device) -> dict[str, Any] | None:
    """What the searches since ``before`` did: the format, the queries, the float64 re-ranks,
    the fp32 and exhaustive fallbacks, the exact comparisons."""
    after = search_totals(detector, device)
    if before is None or after is None:
        return None
    return {key: value if key == "precision" else value - before[key] for key, value in after.items()}


PIXEL_SAMPLE = 2_000_000  # pixels the clean pixel threshold is fitted on, at most
ORACLE = "oracle: F1-max on the clean test set"
HOLDOUT_STREAM = 0x401D  # the held-out normals' draw: its own stream of the seed
MASK_RULE = "any"  # an evaluation pixel is anomalous when any mask pixel it covers is


def evaluation_maps(maps: Tensor, size: int) -> np.ndarray:
    """(B, H, W) maps at the evaluation resolution, as saved (float16, returned as float32 so
    that the metrics are computed from exactly what ``scores.npz`` holds): bilinearly
    upsampled when smaller, area-averaged when a suite asks for a smaller ``map_size``."""
    return resized_maps(maps, size).half().float().cpu().numpy()


def resized_maps(maps: Tensor, size: int) -> Tensor:
    """(B, H, W) maps at ``size``, float32: bilinear up, area-averaged down (weights ≥ 0 that
    sum to 1, so a per-pixel bound resized stays a bound of the resized map)."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) != (size, size):
        mode = "area" if maps.shape[-1] > size else "bilinear"
        maps = F.interpolate(maps[:, None], size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))[:, 0]
    return maps


def evaluation_masks(masks: Tensor, size: int) -> np.ndarray:
    """(B, H, W) binary masks at the evaluation resolution, by the any-pixel rule (``resize_mask``)."""
    return resize_mask(masks, size).to(torch.uint8).cpu().numpy()


@dataclass
class Fitted:
    detector: nn.Module
    split: Split
    clean_scores: np.ndarray  # (M,)
    clean_maps: np.ndarray  # (M, m, m) at the evaluation resolution m
    masks: np.ndarray | None  # (M, m, m) binary, at m; None when the detector does not localize
    fit_seconds: float
    map_size: int  # the evaluation resolution m: the suite's map_size, else the detector's input size
    holdout_scores: np.ndarray | None = None  # clean scores of the held-out normal train images (normal-quantile)
    shared: dict = field(default_factory=dict)  # what the group's cells compute once and share (the certify draws)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, slice(start, min(start + size, n))


def score_images(detector: nn.Module, images: Tensor, *, batch_size: int, device) -> tuple[np.ndarray, Tensor]:
    """Clean scores (M,) and maps (M, H, W) at the input resolution, float16."""
    scores, maps = [], []
    with torch.no_grad():
        for _, sl in _batches(images.shape[0], batch_size):
            out = detector(images[sl].to(device))
            scores.append(out.score.float().cpu())
            maps.append(out.map.half().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps)


def require_finite(scores: np.ndarray, what: str) -> None:
    """A detector that scores NaN or ±inf gives no number that means anything: the cell fails."""
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise UserError(f"the detector returned non-finite scores (NaN or inf) for {bad} of {len(scores)} {what}; every "
                        "metric would be meaningless", key="detector")


def tensors_sha256(state: dict[str, Tensor], keys: list[str]) -> str:
    """sha256 of the named tensors' bytes (and dtypes and shapes), in ``keys`` order."""
    h = hashlib.sha256()
    for key in keys:
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(state[key].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fit_state(detector: nn.Module, split: Split, *, seed: int, batch_size: int, device,
              adopt: nn.Module | None = None) -> dict[str, Any]:
    """Fit (or ``adopt`` the fitted detector it fits from) and score the clean test set; the
    returned dict is the cached fit artifact.

    It keeps what fitting produced (a memory bank, trained parameters), never what it left
    as built: the frozen pretrained or random backbone is rebuilt from its name, weights and
    seed, and checked against the ``rebuilt`` digest when loaded. Clean maps are kept at the
    input resolution, so any evaluation resolution can be derived from them.
    """
    initial = {k: v.detach().clone() for k, v in detector.state_dict().items()}
    start = time.perf_counter()
    if adopt is not None:
        detector.adopt(adopt, seed=seed)
    else:
        detector.fit(split.train.to(device), seed=seed)
    detector.eval()  # training (PatchGuard's) must not leave dropout on for scoring and attacks
    fit_seconds = time.perf_counter() - start
    scores, maps = score_images(detector, split.test, batch_size=batch_size, device=device)
    require_finite(scores, "clean test images")
    state = detector.state_dict()
    unchanged = [k for k, v in state.items() if k in initial and initial[k].shape == v.shape and torch.equal(initial[k], v)]
    del initial
    fitted = {
        "state_dict": {k: v.cpu() for k, v in state.items() if k not in unchanged},
        "rebuilt": {"keys": unchanged, "sha256": tensors_sha256(state, unchanged)},
        "clean_scores": torch.from_numpy(scores), "clean_maps": maps, "fit_seconds": fit_seconds,
    }
    if split.holdout is not None:  # scored once with the fit: the normal-quantile threshold's sample
        held_scores, held_maps = score_images(detector, split.holdout, batch_size=batch_size, device=device)
        fitted |= {"holdout_scores": torch.from_numpy(held_scores), "holdout_maps": held_maps}
    return fitted


def restore_fit(detector: nn.Module, artifact: dict[str, Any]) -> bool:
    """Load a fit artifact into a freshly built detector; False when the rebuilt part is not
    what the fit started from (another torch or timm initialises differently): fit again."""
    rebuilt = artifact.get("rebuilt")
    if rebuilt is None:  # an artifact holding the whole state
        detector.load_state_dict(artifact["state_dict"])
        return True
    state = detector.state_dict()
    if sorted(set(state) - set(artifact["state_dict"])) != sorted(rebuilt["keys"]) or \
            tensors_sha256(state, rebuilt["keys"]) != rebuilt["sha256"]:
        return False
    detector.load_state_dict(artifact["state_dict"], strict=False)
    return True


def hold_out(split: Split, fraction: float, seed: int) -> Split:
    """Set aside ``fraction`` of the normal train images before fitting (drawn from the seed;
    at least one, and at least one left to fit on)."""
    if not fraction:
        return split
    n = split.train.shape[0]
    k = max(1, round(fraction * n))
    if k >= n:
        raise UserError(f"holdout {fraction} of {n} normal train images leaves none to fit on", key="holdout")
    order = np.random.default_rng([seed, HOLDOUT_STREAM]).permutation(n)
    keep, held = np.sort(order[k:]), np.sort(order[:k])
    return replace(split, train=split.train[keep], holdout=split.train[held])


@dataclass(frozen=True)
class Thresholds:
    """Fixed once per (detector, category, seed) from the clean run."""

    metric: float | None  # the F1/G-mean threshold (None: oracle on a test set of one class)
    image: float  # the attacks' decision threshold: ``metric``, else the median clean score
    pixel: float | None  # F1-max over the clean maps' pixels, else their median; None without masks
    rule: str | None = ORACLE  # how ``metric`` was chosen, as the row records it


def quantile_thresholds(q: float, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray | None) -> Thresholds:
    """The Q-quantile of the held-out normal images' clean scores (and of their map pixels):
    a threshold that needs no test label, as a deployed detector would set it."""
    metric = float(np.quantile(scores, q))
    pixel = None
    if masks is not None:
        values = maps.ravel()[:: max(1, maps.size // PIXEL_SAMPLE)].astype(np.float64)
        pixel = float(np.quantile(values, q))
    rule = f"normal-quantile: the {q:g}-quantile of clean scores on {len(scores)} held-out normal train images"
    return Thresholds(metric, metric, pixel, rule)


def clean_thresholds(labels: np.ndarray, clean_scores: np.ndarray, clean_maps: np.ndarray,
                     masks: np.ndarray | None) -> Thresholds:
    metric = best_f1_threshold(labels, clean_scores)[1] if 0 < labels.sum() < len(labels) else None
    pixel = None
    if masks is not None:  # on at most PIXEL_SAMPLE pixels, an even stride: paper-scale sets have ~10^8
        step = max(1, masks.size // PIXEL_SAMPLE)
        pixels, values = masks.ravel()[::step], clean_maps.ravel()[::step]
        pixel = (best_f1_threshold(pixels, values)[1] if 0 < pixels.sum() < len(pixels)
                 else float(np.median(values)))
    return Thresholds(metric, float(np.median(clean_scores)) if metric is None else float(metric),
                      None if pixel is None else float(pixel), ORACLE if metric is not None else None)


EXAMPLE_SIZE = 64  # px of the example thumbnails


def example_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first ``per_class`` normal and anomalous test images (test order: fixed by the data)."""
    return np.sort(np.r_[np.flatnonzero(labels == 0)[:per_class], np.flatnonzero(labels == 1)[:per_class]]).astype(int)


def thumbnail(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C, EXAMPLE_SIZE, EXAMPLE_SIZE), area-averaged (linear: thumb(a) − thumb(b) = thumb(a − b))."""
    return F.interpolate(x.float(), size=(EXAMPLE_SIZE, EXAMPLE_SIZE), mode="area")


def to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def example_arrays(picked: np.ndarray, test: Tensor, adversarial: dict[int, Tensor], clean_maps: np.ndarray,
                   maps: np.ndarray) -> dict[str, np.ndarray]:
    """Thumbnails of the picked images: clean and adversarial image, the perturbation, and
    both maps. The store writes them as PNGs under ``cells/<id>/examples/`` and keeps them
    out of scores.npz."""
    clean = thumbnail(test[torch.as_tensor(picked)])
    adv = thumbnail(torch.stack([adversarial[int(i)] for i in picked]))
    clean_map = thumbnail(torch.from_numpy(np.asarray(clean_maps[picked], np.float32))[:, None])[:, 0]
    adv_map = thumbnail(torch.from_numpy(np.asarray(maps[picked], np.float32))[:, None])[:, 0]
    return {"example_index": picked.astype(np.int64), "example_clean": to_uint8(clean), "example_adv": to_uint8(adv),
            "example_delta": (adv - clean).numpy().astype(np.float16),
            "example_clean_map": clean_map.numpy().astype(np.float16), "example_adv_map": adv_map.numpy().astype(np.float16)}


def ensure_eval(detector: nn.Module, attack: str) -> None:
    """Attacks must leave every module in eval mode (dropout off, BatchNorm statistics fixed):
    restore it, then fail the cell — its adversarial images were made by another model."""
    training = [name or "(detector)" for name, module in detector.named_modules() if module.training]
    if training:
        detector.eval()
        raise RuntimeError(f"attack {attack!r} left the detector in training mode ({', '.join(training[:5])}); "
                           "eval mode restored")


def evaluate_cell(cell: Cell, fitted: Fitted, *, thresholds: Thresholds, device, progress: bool = False,
                  source: nn.Module | None = None, batch_size: int | None = None,
                  recall: Recall | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Attack the test set batch by batch, score the result; returns (row fields, arrays).
    ``batch_size`` overrides the cell's (the out-of-memory retry): no number depends on it.
    ``recall`` (the fit group's) keeps this cell's adversarial images where a later cell takes
    them as a part, and hands this cell the parts earlier cells made."""
    batch_size = batch_size or cell.batch_size
    split, spec, point = fitted.split, cell.spec, cell.attack.kwargs
    models = [m.eval() for m in (fitted.detector, source) if m is not None]  # attacks see the eval-mode model
    labels = torch.from_numpy(split.labels)
    n = split.test.shape[0]
    # counts every image the detector forwards: the attack's step rate, in images per second
    bar = tqdm(desc="  forward passes", unit="img", leave=False, disable=not progress, file=sys.stderr)
    counting = CountingDetector(fitted.detector, bar)
    source_counting = CountingDetector(source, bar) if source is not None else None
    calibrator = attacker_calibrator(split.labels, fitted.clean_scores) if point.get("entropy_weight") else None
    context = Context(threshold=thresholds.image, pixel_threshold=thresholds.pixel, seed=cell.seed,
                      source=source_counting, calibrator=calibrator, recall=recall)
    call = cell_call(spec, point) if recall is not None else None
    recalled_before = Counter(recall.recalled) if recall is not None else Counter()
    scores, maps, linf, l2 = fitted.clean_scores.copy(), fitted.clean_maps.copy(), np.zeros(n), np.zeros(n)
    start, perturbed = time.perf_counter(), spec.kind != "none"
    searched = search_totals(fitted.detector, device)
    # what ``prepare`` fits is fitted once per cell, on the whole cell, and saved with it
    attack = prepare_attack(spec, point, counting, context, CellData(split.train, split.test, labels, batch_size, torch.device(device)))
    threat, options, state = attack.threat, attack.options, attack.context.state
    picked = example_indices(split.labels, cell.examples) if perturbed else np.zeros(0, int)
    adversarial = {}
    for _, sl in _batches(n, batch_size) if perturbed else ():
        x = split.test[sl].to(device)
        masks = split.masks[sl].to(device) if split.masks is not None else None
        x_adv = attack.run(counting, x, labels[sl].to(device), masks, images=tuple(split.names[sl]), calibrator=calibrator)
        if recall is not None:
            recall.offer(call, tuple(split.names[sl]), x_adv)
        for model in models:
            ensure_eval(model, cell.attack.name)
        delta = (x_adv - x).detach().flatten(1)
        linf[sl], l2[sl] = delta.abs().amax(1).cpu().numpy(), delta.double().norm(dim=1).cpu().numpy()
        with torch.no_grad():
            out = fitted.detector(x_adv.detach())
        scores[sl] = out.score.float().cpu().numpy()
        maps[sl] = evaluation_maps(out.map, fitted.map_size)
        for i in picked[(picked >= sl.start) & (picked < sl.stop)]:
            adversarial[int(i)] = x_adv[i - sl.start].detach().cpu()
    seconds = time.perf_counter() - start
    bar.close()
    require_finite(scores, "attacked test images")
    arrays = {"labels": split.labels.astype(np.int64), "scores": scores.astype(np.float32)}
    if fitted.masks is not None:  # float16 maps: what the metrics below were computed from
        arrays |= {"maps": maps.astype(np.float16), "masks": fitted.masks.astype(np.uint8)}
    if perturbed:  # keep the clean scores beside the adversarial ones they are compared with
        arrays["clean_scores"] = fitted.clean_scores.astype(np.float32)
    if fitted.holdout_scores is not None:  # the normal-quantile threshold's sample: the threshold is recomputable
        arrays["holdout_scores"] = fitted.holdout_scores.astype(np.float32)
    arrays |= {f"attack_{key}": value.detach().float().cpu().numpy() for key, value in state.items()}
    if adversarial:
        arrays |= example_arrays(picked, split.test, adversarial, fitted.clean_maps, maps)
    saved_maps = arrays["maps"].astype(np.float32) if "maps" in arrays else None
    clean = fitted.clean_scores.astype(np.float64)
    metrics = compute_metrics(arrays["labels"], arrays["scores"], maps=saved_maps, masks=arrays.get("masks"),
                              threshold=thresholds.metric, clean=clean, perturbed=perturbed, seed=cell.seed)
    arrays |= posterior_arrays(arrays["labels"], clean, arrays["scores"], seed=cell.seed)
    fields = {
        "metrics": metrics,
        "threshold": thresholds.metric,
        "threshold_rule": thresholds.rule,
        "attack_thresholds": {"image": thresholds.image, "pixel": thresholds.pixel},
        "pixel_evaluation": {"resolution": fitted.map_size, "mask_rule": MASK_RULE} if fitted.masks is not None else None,
        "threat": spec.what_ran(threat, options) if spec.kind != "none" else None,
        "seconds": round(seconds, 3),
        "passes": {"forward": counting.forward_passes, "gradient": counting.gradient_passes}
        | ({"source_forward": source_counting.forward_passes, "source_gradient": source_counting.gradient_passes}
           if source_counting is not None else {}),
        "perturbation": {"linf_max": float(linf.max()), "l2_max": float(l2.max())},
        "search": searched_since(fitted.detector, searched, device) if perturbed else None,
        "recalled": dict(recall.recalled - recalled_before) or None if recall is not None else None,
    }
    if fields["threat"] is not None and "steps" in fields["threat"]:  # what ran (a composite attack: its stages' sum)
        fields["steps"] = int(fields["threat"]["steps"])
    return fields, arrays
