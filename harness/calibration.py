"""Calibrated posteriors, calibration error and the entropy attack flag (seed 000).

A calibrator maps a detector's raw anomaly score to P(anomalous). Posteriors of clean
images come from K-fold cross-fitting on the clean labelled scores of the same detector
and category: image i is calibrated by the model fitted on the folds that do not hold it.
Adversarial images are calibrated by that same clean-fitted model, unchanged (the defender
does not know the attack).

Metrics (fractions; entropies in bits, so 1 is the maximum, at p = 0.5):

- ``ece_raw`` — ECE of the min-max-normalised raw score (min and max of the clean scores);
- ``ece_<calibrator>``, ``brier_<calibrator>`` — of each calibrator's posterior;
- ``ece_bins`` — the number of equal-width bins (15);
- ``entropy_clean``, ``entropy_adv`` — mean binary entropy of the Platt posterior on the
  clean and on the attacked images (``entropy_adv`` only on cells that perturb);
- ``flag_auroc`` — AUROC of that entropy separating attacked from clean versions of the
  same images (0.5 = no flag; only on cells that perturb);
- ``f1_platt``, ``gmean_platt`` — detection at the calibrated threshold P = 0.5.

ECE here is the reliability of P(anomalous): per bin, |fraction anomalous − mean P|,
weighted by the bin's share of images.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.special import expit

from robustad_bench.core.registry import Registry

from .metrics import auroc, f1, gmean, register_metric

ECE_BINS = 15
FOLDS = 5

CALIBRATORS: Registry[type] = Registry("calibrator")
register_calibrator = CALIBRATORS.register


@register_calibrator("platt")
class Platt:
    """Logistic regression on the (standardised) score: P = σ(a·s + b) (Platt 1999)."""

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Platt:
        from sklearn.linear_model import LogisticRegression

        self.mean, self.std = float(scores.mean()), float(scores.std()) or 1.0
        model = LogisticRegression(C=1e4).fit(((scores - self.mean) / self.std)[:, None], labels)
        self.a = float(model.coef_[0, 0]) / self.std
        self.b = float(model.intercept_[0]) - self.a * self.mean
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return expit(self.a * scores + self.b)


@register_calibrator("temperature")
class Temperature:
    """One temperature on the logit of the min-max-normalised score: P = σ(logit(u)/T)."""

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Temperature:
        from scipy.optimize import minimize_scalar

        self.low, self.high = float(scores.min()), float(scores.max())
        z = self._logit(scores)

        def nll(log_t: float) -> float:
            p = np.clip(expit(z / np.exp(log_t)), 1e-12, 1 - 1e-12)
            return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

        self.t = float(np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded").x))
        return self

    def _logit(self, scores: np.ndarray) -> np.ndarray:
        u = np.clip((scores - self.low) / max(self.high - self.low, 1e-12), 1e-4, 1 - 1e-4)
        return np.log(u / (1 - u))

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return expit(self._logit(scores) / self.t)


@register_calibrator("isotonic")
class Isotonic:
    """Monotone, piecewise-constant map fitted by isotonic regression (Zadrozny & Elkan 2002)."""

    def fit(self, scores: np.ndarray, labels: np.ndarray) -> Isotonic:
        from sklearn.isotonic import IsotonicRegression

        self.model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        # what IsotonicRegression.predict computes (linear between its thresholds, clipped
        # outside), without its per-call input checks
        return np.interp(scores, self.model.X_thresholds_, self.model.y_thresholds_)


def folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per image, stratified by label, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        fold[members] = np.arange(len(members)) % k
    return fold


def cross_fit(name: str, clean: np.ndarray, labels: np.ndarray, others: list[np.ndarray], *, k: int = FOLDS,
              seed: int = 0) -> list[np.ndarray]:
    """Out-of-fold posteriors of ``clean`` and of each array in ``others`` (scores of the
    same images, e.g. attacked): image i always goes through the model fitted without i."""
    outputs = [np.empty(len(clean)) for _ in range(1 + len(others))]
    for held, model in fold_models(name, clean, labels, k, seed):
        for out, scores in zip(outputs, [clean, *others]):
            out[held] = model.predict(scores[held])
    return outputs


FOLD_MODELS: dict[str, list] = {}  # the fold models depend on the clean scores only: fitted once per group


def fold_models(name: str, clean: np.ndarray, labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, object]]:
    """(held-out mask, model fitted without it) per fold; every cell of a fit group shares the
    clean scores, so the fits are kept (by content) for the group's other cells."""
    key = hashlib.sha256(b"|".join([name.encode(), clean.astype(np.float64).tobytes(), labels.astype(np.int64).tobytes(),
                                    f"{k}|{seed}".encode()])).hexdigest()
    if key not in FOLD_MODELS:
        fold, models = folds(labels, k, seed), []
        for f in range(k):
            held = fold == f
            if held.any():
                models.append((held, CALIBRATORS.get(name)().fit(clean[~held], labels[~held])))
        if len(FOLD_MODELS) > 64:  # a handful of groups at a time: keep memory flat on long runs
            FOLD_MODELS.clear()
        FOLD_MODELS[key] = models
    return FOLD_MODELS[key]


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(anomalous) with ``bins`` equal-width bins on [0, 1]."""
    index = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(labels[members].mean() - probs[members].mean())
    return float(total)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Binary entropy in bits; 0 at p ∈ {0, 1}, 1 at p = 0.5."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def minmax(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    low, high = reference.min(), reference.max()
    return np.clip((scores - low) / max(high - low, 1e-12), 0.0, 1.0)


def posteriors(name: str, labels: np.ndarray, clean: np.ndarray | None, scores: np.ndarray,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Calibrator ``name``'s cross-fitted posteriors of the clean and the scored images; None
    without the clean scores or without two images of each class (every fold needs both)."""
    if clean is None or min(labels.sum(), len(labels) - labels.sum()) < 2:
        return None
    clean, scores = np.asarray(clean, np.float64), np.asarray(scores, np.float64)
    key = hashlib.sha256(b"|".join([name.encode(), clean.tobytes(), np.asarray(labels, np.int64).tobytes(),
                                    scores.tobytes(), str(seed).encode()])).hexdigest()
    if key not in POSTERIORS:  # a cell's calibration columns and its saved arrays share one cross-fit per calibrator
        if len(POSTERIORS) > 16:
            POSTERIORS.clear()
        POSTERIORS[key] = tuple(cross_fit(name, clean, labels, [scores], seed=seed))
    return POSTERIORS[key]


POSTERIORS: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # by content: the few cells being scored


# The calibration columns are metrics like the rest (``harness/metrics.py``): each receives the
# cell's ``clean`` scores of the same images, whether the cell ``perturbed`` them, and the ``seed``.

@register_metric("ece_bins")
def ece_bins(labels, scores, **_) -> int:
    """Bins of every ECE (15, equal width)."""
    return ECE_BINS


@register_metric("ece_raw")
def ece_raw(labels, scores, *, clean=None, **_) -> float | None:
    """ECE of the raw score, min-max scaled on the clean scores."""
    return None if clean is None else ece(minmax(np.asarray(scores, np.float64), np.asarray(clean, np.float64)), labels)


def posterior_metric(name: str, kind: str):
    """The ``ece_<name>`` or ``brier_<name>`` metric of calibrator ``name``."""

    def metric(labels, scores, *, clean=None, seed=0, **_) -> float | None:
        p = posteriors(name, labels, clean, scores, seed)
        if p is None:
            return None
        return ece(p[1], labels) if kind == "ece" else float(np.mean((p[1] - labels) ** 2))

    metric.__doc__ = (f"ECE of the {name} posterior (cross-fitted on clean scores, applied unchanged to attacked ones)."
                      if kind == "ece" else f"Brier score of the {name} posterior.")
    return metric


for _name in CALIBRATORS.names():
    register_metric(f"ece_{_name}")(posterior_metric(_name, "ece"))
    register_metric(f"brier_{_name}")(posterior_metric(_name, "brier"))


@register_metric("entropy_clean")
def entropy_clean(labels, scores, *, clean=None, seed=0, **_) -> float | None:
    """Mean predictive entropy of the Platt posterior on the clean images."""
    p = posteriors("platt", labels, clean, scores, seed)
    return None if p is None else float(entropy(p[0]).mean())


@register_metric("entropy_adv")
def entropy_adv(labels, scores, *, clean=None, perturbed=False, seed=0, **_) -> float | None:
    """Mean predictive entropy of the Platt posterior on the attacked images (cells that perturb)."""
    p = posteriors("platt", labels, clean, scores, seed) if perturbed else None
    return None if p is None else float(entropy(p[1]).mean())


@register_metric("flag_auroc")
def flag_auroc(labels, scores, *, clean=None, perturbed=False, seed=0, **_) -> float | None:
    """AUROC of predictive entropy separating attacked from clean images (an attack flag; cells that perturb)."""
    p = posteriors("platt", labels, clean, scores, seed) if perturbed else None
    if p is None:
        return None
    h_clean, h = entropy(p[0]), entropy(p[1])
    return auroc(np.r_[np.zeros(len(h)), np.ones(len(h))], np.r_[h_clean, h])


@register_metric("f1_platt")
def f1_platt(labels, scores, *, clean=None, seed=0, **_) -> float | None:
    """F1 of the Platt posterior at 0.5."""
    p = posteriors("platt", labels, clean, scores, seed)
    return None if p is None else f1(labels, p[1], threshold=0.5)


@register_metric("gmean_platt")
def gmean_platt(labels, scores, *, clean=None, seed=0, **_) -> float | None:
    """G-mean of the Platt posterior at 0.5."""
    p = posteriors("platt", labels, clean, scores, seed)
    return None if p is None else gmean(labels, p[1], threshold=0.5)


def posterior_arrays(labels: np.ndarray, clean: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The Platt posteriors to save beside a cell's scores (the reliability diagrams read them)."""
    p = posteriors("platt", labels, clean, scores, seed)
    if p is None:
        return {}
    return {"posterior_platt": p[1].astype(np.float32), "posterior_platt_clean": p[0].astype(np.float32)}


def attacker_calibrator(labels: np.ndarray, clean: np.ndarray):
    """The defender's Platt map as an attacker who knows it uses it: fitted on all clean
    scores of the category, as a differentiable torch function score → P(anomalous)."""
    import torch

    if not 0 < labels.sum() < len(labels):
        return None  # no calibrator without both classes: an adaptive attack then fails clearly
    platt = Platt().fit(clean.astype(np.float64), labels)
    return lambda scores: torch.sigmoid(platt.a * scores + platt.b)
