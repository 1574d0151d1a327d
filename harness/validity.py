"""Validity checks that flag weak evaluations (DESIGN §2), and the cells they need.

Computed over the finished rows of one (detector, dataset, category, seed) at a time, per
task: detection rows on image AUROC, localization rows on pixel AUROC; a lower AUROC under
attack means a stronger attack. Attacks are told apart by the metadata they declare at
registration (their kind, whether they are iterative), recorded in each row. Each check
adds a flag to the rows it concerns:

- ``non-monotone-eps``   (a) the same attack entry (label and all else equal) is weaker at a larger ε
- ``more-steps-weaker``  (b) the same attack entry at the same ε, differing only in its steps
                           (or queries), is weaker with more of them
- ``blackbox-stronger``  (c) a score-only attack beats the gradient attacks at that ε
- ``unbounded-not-broken`` (d) a gradient attack at L∞ ε = 1 (any image reachable) leaves
                           detection AUROC above 0.05 — gradients are masked or the attack is
                           broken; every attack row of the group gets the flag
- ``noise-as-strong``    (e) random noise of the same ε is about as harmful as the attack;
                           noise is task-free, so it is compared with each task's rows on
                           that task's metric
- ``score-only``         (f) the detector has no input gradient (admitted score-only): no
                           gradient attack ran on it, so its robust numbers rest on score-only,
                           transfer and noise attacks alone; every attack row gets the flag
- ``certificate-violated`` (g) an attack at L2 ε = r beat a certificate at radius r of the same
                           smoothed detector: its image AUROC is below the certified one (beyond
                           the tolerance), or more images crossed their certified bound (an
                           anomalous one below its lower bound, a normal one above its upper
                           bound) than the confidence allows (the 99.9% quantile of Bin(N, α));
                           a wrong certificate or a wrong attack. The certificate row and the
                           attack row both get the flag

``validity: true`` in a suite adds what the checks need: PGD at ε = 1, noise at every ε the
suite attacks with, and each iterative gradient attack's largest-ε point again with 5× the
steps (score-only queries are left alone: at 5× they would dominate a CPU run).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import binom

from .attacks.threat import Norm
from .rows import is_clean

TOLERANCE = 0.02  # AUROC differences below this are noise, not a flag
UNBOUNDED_MAX_AUROC = 0.05
BUDGET_KEYS = ("steps", "queries")  # what (b) lets differ


def _metric(row: dict[str, Any], task: str) -> float | None:
    metrics = row.get("metrics") or {}
    return metrics.get("pixel_auroc" if task == "localization" else "image_auroc")


def _kind(row: dict[str, Any]) -> str | None:
    if "attack_kind" in row:
        return row["attack_kind"]
    from .attacks import ATTACKS  # rows written before kinds were recorded

    return ATTACKS.get(row["attack"]).kind if row["attack"] in ATTACKS else None


def _config(row: dict[str, Any], *drop: str) -> str:
    """The row's attack entry (label and every parameter) without the keys in ``drop``, as a key."""
    params = row.get("attack_params") or {"name": row["attack"], "norm": row.get("norm"), "eps": row["eps"], "steps": row.get("steps")}
    kept = {k: v for k, v in params.items() if k not in drop}
    return json.dumps([row.get("attack_label"), kept], sort_keys=True, default=str)


def validity_flags(rows: list[dict[str, Any]], arrays: Callable[[dict], dict | None] | None = None) -> dict[str, set[str]]:
    """cell_id → flags, from the finished rows of a run; ``arrays(row)`` (a cell's saved
    arrays, or None) lets the certificate check compare images one by one."""
    flags: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    certificates: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and not is_clean(row) and row.get("metrics"):
            group = row["detector"], row["dataset"], row["category"], row["seed"]
            (certificates if _kind(row) == "certificate" else groups)[group].append(row)
            if row.get("score_only"):
                flags[row["cell_id"]].add("score-only")
    for key, certified in certificates.items():
        _check_certificates(certified, groups.get(key, []), arrays, flags)
    for group in groups.values():
        noise = [r for r in group if _kind(r) == "noise"]
        attacked = [r for r in group if _kind(r) != "noise"]
        for task in sorted({r.get("task") for r in attacked}):
            rows_of_task = [r for r in attacked if r.get("task") == task and _metric(r, task) is not None]
            _check_task(rows_of_task, [r for r in noise if _metric(r, task) is not None], task, flags)
        _check_unbounded(group, flags)
    return flags


def _check_task(rows: list[dict], noise: list[dict], task: str, flags: dict[str, set[str]]) -> None:
    metric = lambda r: _metric(r, task)  # noqa: E731
    by_eps: dict[str, list[dict]] = defaultdict(list)  # (a): all else equal, varying ε
    by_steps: dict[str, list[dict]] = defaultdict(list)  # (b): all else equal, varying steps
    by_budget: dict[tuple, list[dict]] = defaultdict(list)  # (c), (e): same norm and ε
    for r in rows:
        by_eps[_config(r, "eps")].append(r)
        by_steps[_config(r, *BUDGET_KEYS)].append(r)
        by_budget[(r.get("norm"), r["eps"])].append(r)
    for same in by_eps.values():
        for r in same:
            if any(metric(r) > metric(o) + TOLERANCE for o in same if o["eps"] < r["eps"]):
                flags[r["cell_id"]].add("non-monotone-eps")
    for same in by_steps.values():
        for r in same:
            if r.get("iterative", True) and any(metric(r) > metric(o) + TOLERANCE for o in same if o["steps"] < r["steps"]):
                flags[r["cell_id"]].add("more-steps-weaker")
    for (norm, eps), budget in by_budget.items():
        black = [metric(r) for r in budget if _kind(r) == "score-only"]
        white = [r for r in budget if _kind(r) == "gradient"]
        if black and white and min(black) < min(metric(r) for r in white) - TOLERANCE:
            for r in white:
                flags[r["cell_id"]].add("blackbox-stronger")
        same_noise = [metric(r) for r in noise if (r.get("norm"), r["eps"]) == (norm, eps)]
        if same_noise:
            for r in budget:
                if metric(r) >= min(same_noise) - TOLERANCE:
                    flags[r["cell_id"]].add("noise-as-strong")


def _check_certificates(certified: list[dict], attacked: list[dict], arrays: Callable[[dict], dict | None] | None,
                        flags: dict[str, set[str]]) -> None:
    for cert in certified:
        bound = cert["metrics"].get("certified_image_auroc")
        same = [r for r in attacked if r.get("norm") == Norm.L2 and r.get("task") == "detection" and _kind(r) != "noise"
                and math.isclose(float(r["eps"]), float(cert["eps"]), rel_tol=1e-9) and _metric(r, "detection") is not None]
        for row in same:
            beaten = bound is not None and _metric(row, "detection") < bound - TOLERANCE
            if beaten or (arrays is not None and _crossings_beyond_confidence(cert, row, arrays)):
                flags[cert["cell_id"]].add("certificate-violated")
                flags[row["cell_id"]].add("certificate-violated")


def _crossings_beyond_confidence(cert: dict, row: dict, arrays: Callable[[dict], dict | None]) -> bool:
    """More images past their certified bound under the attack than Bin(N, α) allows at 99.9%."""
    bounds, attacked = arrays(cert), arrays(row)
    if bounds is None or attacked is None or "lower" not in bounds or len(attacked["scores"]) != len(bounds["lower"]):
        return False
    anomalous = bounds["labels"] == 1
    crossed = np.where(anomalous, attacked["scores"] < bounds["lower"], attacked["scores"] > bounds["upper"])
    alpha = float((cert.get("certificate") or {}).get("alpha", 0.001))
    return int(crossed.sum()) > int(binom.ppf(0.999, len(crossed), alpha))


def _check_unbounded(group: list[dict], flags: dict[str, set[str]]) -> None:
    unbounded = [r for r in group if _kind(r) == "gradient" and r.get("norm") == Norm.LINF and r["eps"] >= 1.0
                 and r.get("task") == "detection" and _metric(r, "detection") is not None]
    if any(_metric(r, "detection") > UNBOUNDED_MAX_AUROC for r in unbounded):
        for r in group:
            flags[r["cell_id"]].add("unbounded-not-broken")


def validity_points(points: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The extra (name, label, kwargs) attack points ``validity: true`` adds to a grid whose
    attack points are ``points``."""
    from .attacks import ATTACKS

    gradient = [(n, lb, kw) for n, lb, kw in points if ATTACKS.get(n).kind == "gradient"]
    steps = max([kw.get("steps") or 1 for _, _, kw in gradient] + [10])
    extra = [("pgd", "validity-pgd-unbounded", {"eps": 1.0, "norm": "linf", "steps": steps, "objective": "detection"})]
    budgets = sorted({(kw.get("norm", "linf"), kw["eps"]) for _, _, kw in points if kw.get("eps")})
    extra += [("noise", "validity-noise", {"eps": eps, "norm": norm}) for norm, eps in budgets]
    largest: dict[str, tuple[str, str, dict]] = {}
    for name, label, kw in gradient:
        if ATTACKS.get(name).iterative and kw.get("eps") and kw.get("steps") and (label not in largest or kw["eps"] > largest[label][2]["eps"]):
            largest[label] = (name, label, kw)
    # 5× the steps at the same step size (an explicit α stays; the default is re-derived)
    extra += [(name, label, {**kw, "steps": 5 * kw["steps"]}) for name, label, kw in largest.values()]
    return extra
