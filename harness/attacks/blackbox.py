"""Attacks that never ask for a gradient: ``square`` (score queries only) and ``noise``.

Square Attack (Andriushchenko et al., ECCV 2020) is a random search: start from vertical
stripes at ±ε, then each query changes one square window to a new vertex of the ε-ball
and keeps the change per image if the attacker's objective went up. The window's area
follows the paper's schedule p_init → p_init/512 (rescaled to the number of queries).
L∞ is the paper's algorithm: one window per query and image (the official code shares
one window position across the batch; here each image draws its own, from its own random
stream, so an image's result does not depend on its batch), signs per image and channel.
L2 is a simplified variant: the window gets a random-sign block of L2 mass ε/2 and the
result is projected back onto the ε-ball (no meta-pseudo-Gaussian update).
``impl: official`` runs the official implementation (``pyautoattack.square``, margin loss).

``noise`` is the baseline validity check (e) needs: uniform noise of the same budget.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .base import Context, keep_best, register_attack
from .objective import Objective
from .official import official_check, official_square
from .rng import ImageRandom
from .threat import REQUIRED, Norm, ThreatModel, per_image_norm, random_perturbation


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """The paper's piecewise schedule of the window's share of the image."""
    t = int(query / max(queries, 1) * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if t <= bound:
            return p_init / divisor
    return p_init / 512


def window_masks(rng: ImageRandom, side: int, h: int, w: int) -> Tensor:
    """(B, 1, H, W) boolean: one side × side window per image, at a position of its own."""
    corner = rng.randint(h - side + 1, (2,))  # (B, 2): top, left
    rows = torch.arange(h, device=corner.device).view(1, h, 1)
    cols = torch.arange(w, device=corner.device).view(1, 1, w)
    top, left = corner[:, 0].view(-1, 1, 1), corner[:, 1].view(-1, 1, 1)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return inside[:, None]


def square_schedule(threat: ThreatModel, *, p_init: float = 0.8, **_) -> dict:
    return {"queries": threat.steps, "p_init": p_init, "random_start": True,
            "step_rule": "random search: vertical-stripe start, square windows shrinking from p_init"}


@register_attack("square", kind="score-only", iterative=True, adaptive=True, check=official_check, schedule=square_schedule, tiny={"steps": 12},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 1000})
def square(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
           p_init: float = 0.8, impl: Literal["ours", "official"] = "ours") -> Tensor:
    """Score-based black-box random search; ``steps`` is the number of queries per image."""
    if impl == "official":
        return official_square(objective, x, threat, context, p_init=p_init)
    rng, eps = context.random(x.device), threat.eps
    b, c, h, w = x.shape
    stripes = eps * rng.sign((c, 1, w))  # vertical stripes at ±ε
    if threat.norm == Norm.L2:
        stripes = stripes.expand(b, c, h, w) / math.sqrt(h * w * c)  # L2 norm ε
    best = threat.project(x + stripes, x)
    best_loss = objective(best)
    for query in range(1, threat.steps):
        side = max(1, min(h - 1, int(round(math.sqrt(window_fraction(p_init, query, threat.steps) * h * w)))))
        window = window_masks(rng, side, h, w)
        if threat.norm == Norm.LINF:  # a new vertex of the box inside the window
            vertex = (x + eps * rng.sign((c, 1, 1))).clamp(0, 1)
            candidate = torch.where(window, vertex, best)
        else:
            block = rng.sign((c, h, w)) * window
            candidate = threat.project(best + 0.5 * eps * block / per_image_norm(block), x)
        best, best_loss = keep_best(best, best_loss, candidate, objective(candidate))
    return best.detach()


@register_attack("noise", kind="noise", threat={"norm": "linf", "eps": REQUIRED})
def noise(objective: Objective, x: Tensor, threat: ThreatModel, context: Context) -> Tensor:
    """Random noise of budget ε: uniform in [−ε, ε] per pixel (L∞), or a random direction
    of length ε (L2). Knows nothing, queries nothing."""
    delta = random_perturbation(x, threat.eps, threat.norm, context.random(x.device), uniform_radius=False)
    return threat.project(x + delta, x)
