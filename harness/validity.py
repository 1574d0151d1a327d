"""Validity checks that flag weak evaluations (DESIGN §2), and the cells they need.

Computed over the finished rows of one (detector, dataset, category, seed, task) at a time,
on the detection AUROC (pixel AUROC for localization cells); a lower AUROC under attack
means a stronger attack. Each check adds a flag to the rows it concerns:

- ``non-monotone-eps``   (a) the same attack is weaker at a larger ε
- ``more-steps-weaker``  (b) the same attack at the same ε is weaker with more steps
- ``blackbox-stronger``  (c) a score-only attack (square) beats the gradient attacks at that ε
- ``unbounded-not-broken`` (d) PGD at ε = 1 (L∞: any image reachable) leaves detection
                           AUROC above 0.05 — gradients are masked or the attack is broken;
                           every attack row of the group gets the flag
- ``noise-as-strong``    (e) random noise of the same ε is about as harmful as the attack

``validity: true`` in a suite adds what the checks need: PGD at ε = 1, noise at every ε the
suite attacks with, and each iterative gradient attack's largest-ε point again with 5× the
steps (Square's queries are left alone: at 5× they would dominate a CPU run).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

TOLERANCE = 0.02  # AUROC differences below this are noise, not a flag
UNBOUNDED_MAX_AUROC = 0.05
BLACK_BOX = {"square"}
WHITE_BOX = {"fgsm", "pgd", "apgd", "segpgd"}
STEPPED = {"pgd", "apgd", "segpgd", "square"}  # attacks whose strength should grow with steps


def _metric(row: dict[str, Any]) -> float | None:
    metrics = row.get("metrics") or {}
    return metrics.get("pixel_auroc" if row.get("task") == "localization" else "image_auroc")


def _group_key(row: dict[str, Any]) -> tuple:
    return row["detector"], row["dataset"], row["category"], row["seed"], row.get("task")


def validity_flags(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """cell_id → flags, from the finished rows of a run."""
    flags: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and row.get("attack") != "none" and _metric(row) is not None:
            groups[_group_key(row)].append(row)
    for group in groups.values():
        _check_group(group, flags)
    return flags


def _check_group(rows: list[dict], flags: dict[str, set[str]]) -> None:
    by_attack: dict[tuple, list[dict]] = defaultdict(list)  # (a): same attack, varying ε
    by_point: dict[tuple, list[dict]] = defaultdict(list)  # (b): same attack and ε, varying steps
    by_budget: dict[tuple, list[dict]] = defaultdict(list)  # (c), (e): same norm and ε
    for r in rows:
        by_attack[(r["attack"], r["attack_label"], r.get("norm"), r.get("steps"))].append(r)
        by_point[(r["attack"], r.get("norm"), r["eps"])].append(r)
        by_budget[(r.get("norm"), r["eps"])].append(r)
    for same in by_attack.values():
        same = sorted(same, key=lambda r: r["eps"])
        for i, r in enumerate(same):
            if any(_metric(r) > _metric(smaller) + TOLERANCE for smaller in same[:i] if smaller["eps"] < r["eps"]):
                flags[r["cell_id"]].add("non-monotone-eps")
    for (name, _, _), same in by_point.items():
        if name not in STEPPED:
            continue
        for r in same:
            if any(_metric(r) > _metric(o) + TOLERANCE for o in same if o["steps"] < r["steps"]):
                flags[r["cell_id"]].add("more-steps-weaker")
    for budget in by_budget.values():
        noise = [_metric(r) for r in budget if r["attack"] == "noise"]
        black = [_metric(r) for r in budget if r["attack"] in BLACK_BOX]
        white = [r for r in budget if r["attack"] in WHITE_BOX]
        if black and white and min(black) < min(_metric(r) for r in white) - TOLERANCE:
            for r in white:
                flags[r["cell_id"]].add("blackbox-stronger")
        if noise:
            for r in budget:
                if r["attack"] != "noise" and _metric(r) >= min(noise) - TOLERANCE:
                    flags[r["cell_id"]].add("noise-as-strong")
    unbounded = [r for r in rows if r["attack"] in WHITE_BOX and r.get("norm") == "linf" and r["eps"] >= 1.0
                 and r.get("task") == "detection"]
    if any(_metric(r) > UNBOUNDED_MAX_AUROC for r in unbounded):
        for r in rows:
            flags[r["cell_id"]].add("unbounded-not-broken")


def validity_points(points: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The extra (name, label, kwargs) attack points ``validity: true`` adds to a grid whose
    attack points are ``points``."""
    gradient = [(n, lb, kw) for n, lb, kw in points if n in WHITE_BOX]
    steps = max([kw.get("steps") or 1 for _, _, kw in gradient] + [10])
    extra = [("pgd", "validity-pgd-unbounded", {"eps": 1.0, "norm": "linf", "steps": steps, "objective": "detection"})]
    budgets = sorted({(kw.get("norm", "linf"), kw["eps"]) for _, _, kw in points if kw.get("eps")})
    extra += [("noise", "validity-noise", {"eps": eps, "norm": norm}) for norm, eps in budgets]
    largest: dict[str, tuple[str, str, dict]] = {}
    for name, label, kw in gradient:
        if name in STEPPED and kw.get("eps") and kw.get("steps") and (label not in largest or kw["eps"] > largest[label][2]["eps"]):
            largest[label] = (name, label, kw)
    for name, label, kw in largest.values():
        more = {**kw, "steps": 5 * kw["steps"]}
        if "step_size" in more:
            more["step_size"] = None  # re-derived for the new number of steps: 2.5·ε/steps
        extra.append((name, label, more))
    return extra
