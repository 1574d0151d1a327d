"""White-box gradient attacks on anomaly scores and maps: ``none``, ``fgsm``, ``pgd``.

PGD (Madry et al., ICLR 2018) with the anomaly-detection objectives of seed 002 §3; the
default step size α = 2.5·ε/steps is PatchGuard's and ZARND's choice. With several
restarts, each image keeps the restart with the highest final loss.
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
    objective_loss,
    project,
    register_attack,
    resolve_knowledge,
)
from .base import random_start as sample_start


@register_attack("none")
def none(detector, x: Tensor, labels: Tensor, masks: Tensor | None, *, seed: int = 0) -> Tensor:
    """The clean run: returns the images unchanged."""
    return x


@register_attack("fgsm")
def fgsm(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", objective: Objective = "detection",
    knowledge: str | None = None, eot: int = 1, entropy_weight: float = 0.0, calibrator=None, seed: int = 0,
) -> Tensor:
    """One gradient step of size ε (Goodfellow et al., ICLR 2015); ``entropy_weight`` > 0
    makes it adaptive to the entropy flag (see ``objective_loss``)."""
    resolve_knowledge(objective, knowledge)
    adaptive = {"calibrator": calibrator, "entropy_weight": entropy_weight}
    _, grad = input_gradient(detector, x, labels, masks, objective, eot, **adaptive)
    return project(x + eps * ascent_direction(grad, norm), x, eps, norm).detach()


@register_attack("pgd")
def pgd(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 10, step_size: float | None = None,
    random_start: bool = True, restarts: int = 1, objective: Objective = "detection",
    knowledge: str | None = None, eot: int = 1, entropy_weight: float = 0.0, calibrator=None, seed: int = 0,
) -> Tensor:
    """Projected gradient ascent on the objective inside the ε-ball; ``entropy_weight`` > 0
    also keeps the calibrated entropy low (an attacker who knows the flag)."""
    resolve_knowledge(objective, knowledge)
    adaptive = {"calibrator": calibrator, "entropy_weight": entropy_weight}
    alpha = 2.5 * eps / steps if step_size is None else step_size
    generator = torch.Generator().manual_seed(seed)
    best, best_loss = x.detach(), None
    for _ in range(restarts):
        x_adv = sample_start(x, eps, norm, generator) if random_start else x.detach()
        for _ in range(steps):
            _, grad = input_gradient(detector, x_adv, labels, masks, objective, eot, **adaptive)
            x_adv = project(x_adv + alpha * ascent_direction(grad, norm), x, eps, norm).detach()
        if restarts == 1:
            return x_adv
        with torch.no_grad():
            loss = objective_loss(detector, x_adv, labels, masks, objective, **adaptive)
        best, best_loss = keep_best(best, best_loss, x_adv, loss)
    return best

