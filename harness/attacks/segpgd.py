"""SegPGD (Gu et al., ECCV 2022) adapted to anomaly maps: a localization attack with mask
knowledge that shifts its weight from correctly to wrongly scored pixels over the steps.

A pixel is scored correctly when the map is on the right side of the decision threshold t
(anomalous pixels above, normal pixels below; t is the clean threshold, or the batch's
median clean map value without one). At step k of K the per-image loss is

    (1 − λ_k) · L(correct pixels) + λ_k · L(wrong pixels),   λ_k = (k − 1) / (2K),

with L the localization objective (mean map over normal pixels − mean over anomalous
pixels) restricted to those pixels. Early steps push the pixels still scored correctly;
later steps keep the flipped ones flipped. Step size 2.5·ε/steps by default, random start.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..errors import UserError
from .base import (
    Norm,
    ascent_direction,
    localization_objective,
    project,
    random_start,
    register_attack,
    resolve_knowledge,
)


@register_attack("segpgd")
def segpgd(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 10, step_size: float | None = None,
    objective: Literal["localization"] = "localization", knowledge: str | None = None,
    threshold: float | None = None, seed: int = 0,
) -> Tensor:
    """Localization attack weighting correctly and wrongly scored pixels over the steps."""
    resolve_knowledge("localization", knowledge)
    if masks is None:
        raise UserError("segpgd attacks the anomaly map and needs pixel masks; this dataset has none", key="name")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    if threshold is None:
        with torch.no_grad():
            threshold = float(detector(x).map.median())
    t = threshold
    masks = masks.to(x.dtype)
    x_adv = random_start(x, eps, norm, torch.Generator().manual_seed(seed))
    for k in range(1, steps + 1):
        lam = (k - 1) / (2 * steps)
        x_adv = x_adv.detach().requires_grad_(True)
        maps = detector(x_adv).map
        with torch.no_grad():
            correct = ((maps > t).float() == masks).float().flatten(1)
        loss = (1 - lam) * localization_objective(maps, masks, correct) + lam * localization_objective(maps, masks, 1 - correct)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = project(x_adv.detach() + alpha * ascent_direction(grad, norm), x, eps, norm)
    return x_adv.detach()

