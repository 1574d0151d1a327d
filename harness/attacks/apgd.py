"""APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), on the anomaly-detection objectives.

Step-size free: η starts at 2ε and is checked at w_j ≈ p_j·N (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)). At a checkpoint an image's η is halved,
and it restarts from its best point, when (1) its loss increased in at most 75 % of the
steps since the last checkpoint (the official ``t <= k·ρ``), or (2) its η was *not* halved
at the last checkpoint and its best loss has not improved since then. The update has
momentum 0.75. Each image keeps its best point over all steps and restarts. The loss is
the objective itself (for detection, y·s — the two-logit cross-entropy of AutoAttack's
APGD-CE is a monotone function of it, so the path is the same).

``impl: official`` runs the official implementation (``pyautoattack.autopgd_base``,
APGD-CE in its ``best_loss`` mode) through the two-logit wrapper instead: the reference
path. Its random start is drawn for the whole batch from the global generator (seeded,
then restored), so unlike ours it depends on the batch's composition.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from robustad_bench.core.schema import PositiveInt

from .base import Context, initial_point, keep_best, register_attack
from .objective import Objective
from .official import official_apgd, official_check
from .threat import REQUIRED, ThreatModel

MOMENTUM = 0.75
RHO = 0.75  # at most this fraction of increasing steps halves the step size


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve the step size (the paper's w_j), in the official
    code's integer form: a first period of 0.22·N, each next 0.03·N shorter, at least 0.06·N."""
    period, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], period
    while at <= steps:
        out.append(at)
        period = max(period - shrink, shortest)
        at += period
    return out


def halving(increases: Tensor, period: int, reduced_at_check: Tensor, best_at_check: Tensor, best_loss: Tensor) -> Tensor:
    """(B,) which images halve their step size at a checkpoint (the official conditions):
    (1) the loss went up in at most ρ of the ``period`` steps since the last checkpoint, or
    (2) the step size was not halved there and the best loss has not improved since."""
    oscillating = increases <= RHO * period
    stalled = ~reduced_at_check & (best_at_check >= best_loss)
    return oscillating | stalled


def single_run(objective: Objective, x: Tensor, threat: ThreatModel, start: Tensor, eot: int) -> tuple[Tensor, Tensor]:
    """One APGD run from ``start``: (best point, best loss) per image."""
    b, eps = x.shape[0], threat.eps
    view = (-1,) + (1,) * (x.dim() - 1)
    x_adv = start
    loss, grad = objective.gradient(x_adv, eot)
    best, best_loss, best_grad = x_adv.clone(), loss.clone(), grad.clone()
    eta = torch.full((b,), 2.0 * eps, device=x.device)
    previous, checks = x_adv.clone(), checkpoints(threat.steps)
    last_check, increases = 0, torch.zeros(b, device=x.device)
    reduced_at_check = torch.ones(b, dtype=torch.bool, device=x.device)  # official: no (2) at the first check
    best_at_check = best_loss.clone()
    for i in range(threat.steps):
        z = threat.project(x_adv + eta.view(view) * threat.ascent(grad), x)
        a = 1.0 if i == 0 else MOMENTUM
        step = threat.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - previous), x)
        previous, x_adv = x_adv, step.detach()
        new_loss, grad = objective.gradient(x_adv, eot)
        increases += (new_loss > loss).float()
        loss = new_loss
        improved = loss > best_loss
        best = torch.where(improved.view(view), x_adv, best)
        best_grad = torch.where(improved.view(view), grad, best_grad)
        best_loss = torch.where(improved, loss, best_loss)
        if i + 1 in checks:
            halve = halving(increases, i + 1 - last_check, reduced_at_check, best_at_check, best_loss)
            eta = torch.where(halve, eta / 2, eta)
            x_adv = torch.where(halve.view(view), best, x_adv)
            grad = torch.where(halve.view(view), best_grad, grad)
            last_check, increases = i + 1, torch.zeros_like(increases)
            reduced_at_check, best_at_check = halve, best_loss.clone()
    return best, best_loss


def schedule(threat: ThreatModel, **_) -> dict:
    return {"random_start": True, "alpha": None,
            "step_rule": f"adaptive: η = 2ε at the start, halved per image at checkpoints {sorted(checkpoints(threat.steps))}; "
                         f"momentum {MOMENTUM}"}


@register_attack("apgd", kind="gradient", iterative=True, adaptive=True, check=official_check, schedule=schedule, tiny={"steps": 5},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 100, "restarts": 1})
def apgd(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
         eot: PositiveInt = 1, impl: Literal["ours", "official"] = "ours") -> Tensor:
    """Auto-PGD: momentum and a step size adapted per image (no step size to tune)."""
    if impl == "official":
        return official_apgd(objective, x, threat, context, eot=eot)
    rng = context.random(x.device)
    start_threat = ThreatModel(threat.norm, threat.eps, random_start=True)
    best, best_loss = x.detach(), None
    for restart in range(threat.restarts):
        start = initial_point(x, start_threat, context, rng) if restart == 0 else start_threat.start(x, rng)
        x_adv, loss = single_run(objective, x, threat, start, eot)
        best, best_loss = keep_best(best, best_loss, x_adv, loss)
    return best.detach()
