"""APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), on the anomaly-detection objectives.

Step-size free: η starts at 2ε and is halved at checkpoints w_j ≈ p_j·N (p_0 = 0,
p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) for every image whose loss
increased in fewer than 75 % of the steps since the last checkpoint, or whose step size
and best loss did not change since then; such an image restarts from its best point. The
update has momentum 0.75. Each image keeps its best point over all steps and restarts.
The loss is the objective itself (for detection, y·s — the two-logit cross-entropy of
AutoAttack's APGD-CE is a monotone function of it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    Norm,
    Objective,
    ascent_direction,
    input_gradient,
    keep_best,
    project,
    random_start,
    register_attack,
    resolve_knowledge,
)

MOMENTUM = 0.75
RHO = 0.75  # fraction of increasing steps below which the step size is halved


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


def _single_run(detector, x, labels, masks, *, eps, norm, steps, objective, eot, generator) -> tuple[Tensor, Tensor]:
    b = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    x_adv = random_start(x, eps, norm, generator)
    loss, grad = input_gradient(detector, x_adv, labels, masks, objective, eot)
    best, best_loss, best_grad = x_adv.clone(), loss.clone(), grad.clone()
    eta = torch.full((b,), 2.0 * eps, device=x.device)
    previous, checks = x_adv.clone(), checkpoints(steps)
    last_check, increases = 0, torch.zeros(b, device=x.device)
    eta_at_check, best_at_check = eta.clone(), best_loss.clone()
    for i in range(steps):
        z = project(x_adv + eta.view(view) * ascent_direction(grad, norm), x, eps, norm)
        a = 1.0 if i == 0 else MOMENTUM
        step = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - previous), x, eps, norm)
        previous, x_adv = x_adv, step.detach()
        new_loss, grad = input_gradient(detector, x_adv, labels, masks, objective, eot)
        increases += (new_loss > loss).float()
        loss = new_loss
        improved = loss > best_loss
        best = torch.where(improved.view(view), x_adv, best)
        best_grad = torch.where(improved.view(view), grad, best_grad)
        best_loss = torch.where(improved, loss, best_loss)
        if i + 1 in checks:
            oscillating = increases < RHO * (i + 1 - last_check)
            stalled = (eta_at_check == eta) & (best_at_check == best_loss)
            halve = oscillating | stalled
            eta = torch.where(halve, eta / 2, eta)
            x_adv = torch.where(halve.view(view), best, x_adv)
            grad = torch.where(halve.view(view), best_grad, grad)
            last_check, increases = i + 1, torch.zeros_like(increases)
            eta_at_check, best_at_check = eta.clone(), best_loss.clone()
    return best, best_loss


@register_attack("apgd")
def apgd(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 100, restarts: int = 1,
    objective: Objective = "detection", knowledge: str | None = None, eot: int = 1, seed: int = 0,
) -> Tensor:
    """Auto-PGD: momentum and a step size adapted per image (no step size to tune)."""
    resolve_knowledge(objective, knowledge)
    generator = torch.Generator().manual_seed(seed)
    best, best_loss = x.detach(), None
    for _ in range(restarts):
        x_adv, loss = _single_run(detector, x, labels, masks, eps=eps, norm=norm, steps=steps,
                                  objective=objective, eot=eot, generator=generator)
        best, best_loss = keep_best(best, best_loss, x_adv, loss)
    return best.detach()
