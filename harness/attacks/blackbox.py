"""Attacks that never ask for a gradient: ``square`` (score queries only) and ``noise``.

Square Attack (Andriushchenko et al., ECCV 2020) is a random search: start from vertical
stripes at ±ε, then each query changes one square window to a new vertex of the ε-ball
and keeps the change per image if the attacker's objective went up. The window's area
follows the paper's schedule p_init → p_init/512 (rescaled to the number of queries).
L∞ is the paper's algorithm (one window per query, shared by the batch, signs per image
and channel). L2 is a simplified variant: the window gets a random-sign block of L2 mass
ε/2 and the result is projected back onto the ε-ball (no meta-pseudo-Gaussian update).

``noise`` is the baseline validity check (e) needs: uniform noise of the same budget.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    Norm,
    Objective,
    device_generator,
    keep_best,
    objective_loss,
    per_image_norm,
    project,
    register_attack,
    resolve_knowledge,
)


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """The paper's piecewise schedule of the window's share of the image."""
    t = int(query / max(queries, 1) * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if t <= bound:
            return p_init / divisor
    return p_init / 512


def _signs(shape, generator: torch.Generator, device) -> Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).float().to(device)


@register_attack("square")
def square(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 1000, p_init: float = 0.8,
    objective: Objective = "detection", knowledge: str | None = None, seed: int = 0,
) -> Tensor:
    """Score-based black-box random search; ``steps`` is the number of queries per image."""
    resolve_knowledge(objective, knowledge)
    generator = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape

    def loss_of(candidate: Tensor) -> Tensor:
        with torch.no_grad():
            return objective_loss(detector, candidate, labels, masks, objective)

    stripes = eps * _signs((b, c, 1, w), generator, x.device)  # vertical stripes at ±ε
    if norm == "l2":
        stripes = stripes.expand(b, c, h, w) / math.sqrt(h * w * c)  # L2 norm ε
    best = project(x + stripes, x, eps, norm)
    best_loss = loss_of(best)
    for query in range(1, steps):
        side = max(1, min(h - 1, int(round(math.sqrt(window_fraction(p_init, query, steps) * h * w)))))
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        candidate = best.clone()
        window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        if norm == "linf":  # a new vertex of the box inside the window
            candidate[window] = (x[window] + eps * _signs((b, c, 1, 1), generator, x.device)).clamp(0, 1)
        else:
            block = _signs((b, c, side, side), generator, x.device)
            candidate[window] = candidate[window] + 0.5 * eps * block / per_image_norm(block)
            candidate = project(candidate, x, eps, norm)
        best, best_loss = keep_best(best, best_loss, candidate, loss_of(candidate))
    return best.detach()


@register_attack("noise")
def noise(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", seed: int = 0,
) -> Tensor:
    """Random noise of budget ε: uniform in [−ε, ε] per pixel (L∞), or a random direction
    of length ε (L2). Knows nothing, queries nothing."""
    g = device_generator(torch.Generator().manual_seed(seed), x.device)
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=g, device=x.device)
        delta = eps * direction / per_image_norm(direction)
    return project(x + delta, x, eps, norm)
