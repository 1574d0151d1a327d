"""A³ — Adaptive Auto Attack (Liu et al., CVPR 2022, "Practical evaluation of adversarial
robustness via adaptive auto attack"; seed 002 Table 4, ref. [48]).

A³ spends its budget where it pays: restarts of a PGD with a cosine-annealed step size
(ε down to 0.1ε for ≤ 10 steps, else 0.001ε), each restart after the first opened by a few
steps of *adaptive direction initialisation* (ADI: Output-Diversified Initialisation along
a logit direction drawn from the directions that worked before), and *online
statistics-based discarding* (OSD) of images unlikely to gain from more restarts. The point
is strength per query; the harness records the forward and gradient passes.

Adapted to a detector, a two-logit model ``[-(s−t)/2, (s−t)/2]``:

- ADI: a direction in logit space only chooses whether the score is pushed with (+1) or
  against (−1) the attack's direction; each image draws its sign from its own record — a
  Beta(1, 1) count of which sign opened restarts that improved its best loss (A³ keeps
  these counts over the whole test set; here an image's result must not depend on the
  others). ADI takes ``adi_steps`` steps of size ε, then PGD runs ``steps − adi_steps``.
- OSD: after each restart from the second on, an image is discarded (no more restarts,
  no more passes) when the restart raised its best loss by less than ``discard_tol`` of
  what the attack had gained on it so far (A³ ranks images against each other by loss;
  again per image here).
- Images are not dropped when they cross the threshold: AUROC needs every attacked score.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustad_bench.core.schema import NonNegativeInt

from .base import Context, register_attack
from .objective import Objective
from .rng import ImageRandom
from .threat import REQUIRED, ThreatModel


def cosine_steps(eps: float, steps: int) -> list[float]:
    """A³'s step sizes: ε annealed to 0.1ε (≤ 10 steps) or 0.001ε on a half cosine."""
    low = eps * (0.1 if steps <= 10 else 0.001)
    return [low + (eps - low) * (1 + math.cos(math.pi * s / (steps + 1))) / 2 for s in range(steps)]


def one_run(objective: Objective, x: Tensor, threat: ThreatModel, start: Tensor, adi_sign: Tensor | None,
            adi_steps: int) -> tuple[Tensor, Tensor]:
    """ADI (when ``adi_sign`` is given) then cosine-step PGD: (best point, best loss) per image."""
    view = (-1,) + (1,) * (x.dim() - 1)
    x_adv, best, best_loss = start, start, None
    if adi_sign is not None:
        for _ in range(adi_steps):
            _, grad = objective.gradient(x_adv)
            x_adv = threat.project(x_adv + threat.eps * adi_sign.view(view) * threat.ascent(grad), x)
    pgd_steps = threat.steps - (adi_steps if adi_sign is not None else 0)
    for alpha in cosine_steps(threat.eps, pgd_steps):
        loss, grad = objective.gradient(x_adv)
        if best_loss is None:
            best, best_loss = x_adv, loss
        better = loss > best_loss
        best, best_loss = torch.where(better.view(view), x_adv, best), torch.where(better, loss, best_loss)
        x_adv = threat.project(x_adv + alpha * threat.ascent(grad), x).detach()
    loss = objective(x_adv)
    better = loss > best_loss
    return torch.where(better.view(view), x_adv, best), torch.where(better, loss, best_loss)


def draw_signs(rng: ImageRandom, record: Tensor) -> Tensor:
    """Per image, +1 with the posterior mean of "+1 is the better opening" under a Beta(1, 1)
    prior; ``record`` (B, 4) counts +1 tries, +1 wins, −1 tries, −1 wins. A +1 win and a
    −1 loss are evidence for +1."""
    plus_tries, plus_wins, minus_tries, minus_wins = record.unbind(1)
    p_plus = (1 + plus_wins + minus_tries - minus_wins) / (2 + plus_tries + minus_tries)
    return torch.where(rng.rand(()).to(p_plus) < p_plus, 1.0, -1.0)


def check_budget(steps: int = 20, adi_steps: int = 7, **_) -> list[tuple[str, str]]:
    if adi_steps >= steps:
        return [("adi_steps", f"ADI takes {adi_steps} of each restart's {steps} steps: leave some for PGD (adi_steps < steps)")]
    return []


def schedule(threat: ThreatModel, *, adi_steps: int = 7, **_) -> dict:
    return {"random_start": True, "alpha": None, "adi_steps": adi_steps,
            "step_rule": f"{adi_steps} ADI steps of size ε, then PGD with a cosine-annealed step from ε to "
                         f"{'0.1' if threat.steps - adi_steps <= 10 else '0.001'}ε; a random start per restart"}


@register_attack("a3", kind="gradient", iterative=True, check=check_budget, schedule=schedule, tiny={"steps": 4, "restarts": 3, "adi_steps": 2},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 20, "restarts": 5})
def a3(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
       adi_steps: NonNegativeInt = 7, discard_tol: float = 0.01) -> Tensor:
    """Cosine-step PGD restarts opened by adaptive direction initialisation; per-image discarding."""
    rng = context.random(x.device)
    clean = objective(x)
    start_threat = ThreatModel(threat.norm, threat.eps, random_start=True)
    best, best_loss = one_run(objective, x, threat, start_threat.start(x, rng), None, adi_steps)
    record = torch.zeros(len(x), 4, device=x.device)  # +1 tries, +1 wins, −1 tries, −1 wins
    active = torch.ones_like(clean, dtype=torch.bool)
    for _ in range(1, threat.restarts):
        signs, starts = draw_signs(rng, record), start_threat.start(x, rng)  # drawn for every image
        keep = active.nonzero().flatten()
        if len(keep) == 0:
            break
        run_best, run_loss = one_run(objective.subset(keep), x[keep], threat, starts[keep], signs[keep], adi_steps)
        gain = run_loss - best_loss[keep]
        improved = gain > 0
        plus = signs[keep] > 0
        record[keep] += torch.stack([plus, plus & improved, ~plus, ~plus & improved], 1).float()
        best[keep[improved]], best_loss[keep[improved]] = run_best[improved], run_loss[improved]
        gained = best_loss[keep] - clean[keep]
        active[keep] = gain > discard_tol * gained.abs()  # OSD: a restart that added (almost) nothing ends it
    return best.detach()
