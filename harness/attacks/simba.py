"""SimBA — Simple Black-box Attack (Guo et al., ICML 2019; seed 002's black-box attack, ref. [30]).

Score queries only. Each image walks through its own random order of orthonormal
directions q; for each, it tries x − δ·q, and if the attacker's objective did not go up,
x + δ·q, keeping whichever improved it (at most two queries per direction). The basis is
``pixel`` (one colour value at a time: SimBA) or ``dct`` (the low-frequency block of the
2-D orthonormal DCT, the first ``freq_fraction`` of each side: SimBA-DCT, the authors'
28/224 by default). Every candidate is projected onto the ε-ball ∩ [0, 1] box.

Step δ: under L∞ it is scaled so that δ·q reaches ±ε at its largest pixel (a pixel step
is then a move to a vertex of the ball); under L2 it is ``step_fraction``·ε (default ¼).
``steps`` counts directions tried per image; queries are counted by the harness.

Departures from the authors' code (simba.py): directions are drawn per image, not one
order for the batch (an image's result must not depend on its batch); every image keeps
searching after it crosses the decision threshold (AUROC needs every attacked score, not
a success rate); the L∞ budget is a projection, not the code's ``linf_bound`` clipping
of the DCT perturbation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .base import Context, register_attack
from .objective import Objective
from .rng import ImageRandom
from .threat import REQUIRED, Norm, ThreatModel


def dct_matrix(n: int, device) -> Tensor:
    """(n, n) orthonormal DCT-II: row k is the k-th basis vector."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def directions(indices: Tensor, basis: str, shape: tuple[int, int, int], freq: tuple[int, int], device) -> Tensor:
    """(B, C, H, W) unit-L2 basis directions, one per image, from flat coordinate indices."""
    c, h, w = shape
    if basis == "pixel":
        return torch.zeros(len(indices), c * h * w, device=device).scatter_(1, indices[:, None], 1.0).view(-1, c, h, w)
    fh, fw = freq
    channel, u, v = indices // (fh * fw), (indices // fw) % fh, indices % fw
    pattern = torch.einsum("bh,bw->bhw", dct_matrix(h, device)[u], dct_matrix(w, device)[v])  # (B, H, W)
    return torch.nn.functional.one_hot(channel, c).float()[:, :, None, None] * pattern[:, None]


def image_orders(rng: ImageRandom, n_dims: int, steps: int) -> Tensor:
    """(B, steps) coordinates per image: random permutations of all ``n_dims``, repeated as needed."""
    rounds = math.ceil(steps / n_dims)
    keys = rng.rand((rounds, n_dims))  # a permutation per round = argsort of uniform keys
    return keys.argsort(dim=-1).flatten(1)[:, :steps]


@register_attack("simba", kind="score-only", iterative=True, adaptive=True, tiny={"steps": 15},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 1000})
def simba(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
          basis: Literal["pixel", "dct"] = "dct", freq_fraction: float = 0.125, step_fraction: float = 0.25) -> Tensor:
    """Coordinate-wise random search over a pixel or low-frequency DCT basis."""
    b, c, h, w = x.shape
    freq = (max(1, round(h * freq_fraction)), max(1, round(w * freq_fraction))) if basis == "dct" else (h, w)
    order = image_orders(context.random(x.device), c * freq[0] * freq[1], threat.steps)
    x_adv, best = x.detach(), objective(x)
    for k in range(threat.steps):
        q = directions(order[:, k], basis, (c, h, w), freq, x.device)
        if threat.norm == Norm.LINF:
            delta = threat.eps * q / q.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
        else:
            delta = step_fraction * threat.eps * q
        minus = threat.project(x_adv - delta, x)
        loss = objective(minus)
        improved = loss > best
        x_adv, best = torch.where(improved.view(-1, 1, 1, 1), minus, x_adv), torch.where(improved, loss, best)
        retry = (~improved).nonzero().flatten()  # the + direction, only for images the − did not help
        if len(retry):
            plus = threat.project(x_adv[retry] + delta[retry], x[retry])
            plus_loss = objective.subset(retry)(plus)
            better = plus_loss > best[retry]
            x_adv[retry[better]], best[retry[better]] = plus[better], plus_loss[better]
    return x_adv
