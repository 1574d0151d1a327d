"""Detection and localization metrics, computed from saved per-image scores and maps.

Image level: AUROC, AP, F1 at a threshold fixed on the clean run, F1-max (best threshold,
reported separately), G-mean at the clean threshold. Pixel level: AUROC and AUPRO up to
FPR 0.3 (Bergmann et al., IJCV 2021). Every function returns ``None`` where the metric
is undefined (one class only, no masks), never a made-up number.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from robustad_bench.core.registry import Registry

MetricFn = Callable[..., "float | None"]
METRIC_PARAMETERS = ("labels", "scores")  # a metric's first two parameters (``compute_metrics`` says the keywords)


def admit_metric(obj: object) -> MetricFn | None:
    """A Python function whose first parameters are ``labels, scores`` (builtins such as
    ``os.system`` are not metrics)."""
    if not inspect.isfunction(obj):
        return None
    names = list(inspect.signature(obj).parameters)[:2]
    return obj if tuple(names) == METRIC_PARAMETERS else None


METRICS: Registry[MetricFn] = Registry("metric", "robustad_bench.metrics", admit=admit_metric,
                                       expected="a metric function fn(labels, scores, *, maps, masks, threshold, clean, perturbed, seed)")
register_metric = METRICS.register


def _two_classes(labels: np.ndarray) -> bool:
    return 0 < int(np.sum(labels)) < len(labels)


def precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at every distinct score, in increasing threshold order
    (predictions ``score >= threshold``; anomalous = positive): scikit-learn's
    ``precision_recall_curve`` without its end point, and without its input checks, which
    cost more than the curve on a cell's few hundred images."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ranked, positive = scores[order], (np.asarray(labels)[order] == 1)
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # the last image of each distinct score
    tps = np.cumsum(positive)[last].astype(np.float64)
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] else np.ones_like(tps)
    return precision[::-1], recall[::-1], ranked[last][::-1]


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(F1-max, its threshold); predictions are ``score >= threshold`` (ties: the lowest threshold)."""
    precision, recall, thresholds = precision_recall(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann–Whitney statistic: P(a positive scores above a negative), ties
    counted half (average ranks) — the area under the ROC curve, without its curve."""
    from scipy.stats import rankdata

    positive = np.asarray(labels) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@register_metric("image_auroc")
def image_auroc(labels, scores, **_) -> float | None:
    """Image AUROC: P(an anomalous image scores above a normal one); 0.5 is chance."""
    return auroc(labels, scores) if _two_classes(labels) else None


@register_metric("image_ap")
def image_ap(labels, scores, **_) -> float | None:
    """Average precision of the image scores, anomalous as the positive class: Σ (Rₙ − Rₙ₋₁) Pₙ
    over decreasing thresholds (scikit-learn's definition, no interpolation)."""
    if not _two_classes(labels):
        return None
    precision, recall, _ = precision_recall(labels, scores)
    precision, recall = precision[::-1], recall[::-1]  # decreasing thresholds: recall rises from 0
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@register_metric("f1_max")
def f1_max(labels, scores, **_) -> float | None:
    """The best F1 over all thresholds of these scores (no fixed threshold)."""
    return best_f1_threshold(labels, scores)[0] if _two_classes(labels) else None


def _confusion(labels, scores, threshold):
    pred = scores >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    return tp, fp, fn, tn


@register_metric("f1")
def f1(labels, scores, *, threshold=None, **_) -> float | None:
    """F1 at ``threshold`` (fixed on the clean run of the same detector and category)."""
    if threshold is None or not _two_classes(labels):
        return None
    tp, fp, fn, _ = _confusion(labels, scores, threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


@register_metric("gmean")
def gmean(labels, scores, *, threshold=None, **_) -> float | None:
    """sqrt(TPR · TNR) at the clean threshold."""
    if threshold is None or not _two_classes(labels):
        return None
    tp, fp, fn, tn = _confusion(labels, scores, threshold)
    return float(np.sqrt(tp / (tp + fn) * tn / (tn + fp)))


@register_metric("pixel_auroc")
def pixel_auroc(labels, scores, *, maps=None, masks=None, **_) -> float | None:
    """Pixel AUROC over every pixel of the test set, at the evaluation resolution."""
    from sklearn.metrics import roc_auc_score

    if maps is None or masks is None:
        return None
    truth = masks.reshape(-1) > 0.5
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth, maps.reshape(-1)))


@register_metric("aupro")
def aupro(labels, scores, *, maps=None, masks=None, max_fpr: float = 0.3, **_) -> float | None:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0,1].

    Regions are the 8-connected components of each ground-truth mask. Sweeping the threshold
    down through every distinct map value, PRO is the mean over regions of the fraction of
    the region above threshold, and FPR the fraction of normal pixels above it.
    """
    if maps is None or masks is None:
        return None
    truth = masks > 0.5
    sizes, region = [], np.zeros(truth.shape, dtype=np.int64)  # 0 = normal pixel
    for i in range(truth.shape[0]):
        comp, n = ndimage.label(truth[i], structure=np.ones((3, 3)))
        if n:
            region[i][comp > 0] = comp[comp > 0] + len(sizes)
            sizes.extend(np.bincount(comp.ravel())[1:].tolist())
    n_normal = int((~truth).sum())
    if not sizes or n_normal == 0:
        return None
    flat_scores, flat_region = maps.reshape(-1), region.reshape(-1)
    order = np.argsort(-flat_scores, kind="stable")
    flat_scores, flat_region = flat_scores[order], flat_region[order]
    weight = np.where(flat_region > 0, 1.0 / np.asarray([np.inf, *sizes])[flat_region], 0.0)
    pro = np.cumsum(weight) / len(sizes)
    fpr = np.cumsum(flat_region == 0) / n_normal
    last_of_tie = np.r_[flat_scores[1:] != flat_scores[:-1], True]
    fpr, pro = np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]
    cut = np.searchsorted(fpr, max_fpr, side="right")
    if cut < len(fpr):  # interpolate the curve at exactly max_fpr
        f0, f1_, p0, p1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        p_at = p0 + (p1 - p0) * (max_fpr - f0) / (f1_ - f0)
        fpr, pro = np.r_[fpr[:cut], max_fpr], np.r_[pro[:cut], p_at]
    return float(np.trapezoid(pro, fpr) / max_fpr)


def compute_metrics(labels, scores, *, maps=None, masks=None, threshold=None, clean=None, perturbed=False,
                    seed=0) -> dict[str, float | None]:
    """Every registered metric on one cell's saved arrays. ``clean``: the clean scores of the
    same images (what clean-vs-attacked metrics compare with), ``perturbed``: whether the cell
    perturbs, ``seed``: the cell's (cross-fitting folds). A metric gets the keywords it takes."""
    context = {"maps": maps, "masks": masks, "threshold": threshold, "clean": clean, "perturbed": perturbed, "seed": seed}
    return {name: call_metric(METRICS.get(name), labels, scores, context) for name in METRICS.names()}


def call_metric(fn: MetricFn, labels, scores, context: dict) -> float | None:
    """``fn(labels, scores, **context)``, passing only the keywords ``fn`` takes (a metric
    written as ``fn(labels, scores, *, maps, masks, threshold)`` keeps working)."""
    parameters = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        context = {k: v for k, v in context.items() if k in parameters}
    return fn(labels, scores, **context)


from . import calibration  # noqa: E402,F401  the calibration columns register as metrics too (that module imports this one)
