"""SegPGD (Gu et al., ECCV 2022) adapted to anomaly maps: a localization attack with mask
knowledge that shifts its weight from correctly to wrongly scored pixels over the steps.

A pixel is scored correctly when the map is on the right side of the pixel threshold t
(anomalous pixels above, normal pixels below). t is the clean run's pixel-level threshold
(F1-max over the clean maps' pixels, recorded in the cell) — not the image-level one: map
values and image scores live on different scales. At step k of K the per-image loss is

    (1 − λ_k) · L(correct pixels) + λ_k · L(wrong pixels),   λ_k = (k − 1) / (2K),

with L the localization objective (mean map over normal pixels − mean over anomalous
pixels) restricted to those pixels. Early steps push the pixels still scored correctly;
later steps keep the flipped ones flipped. Step size 2.5·ε/steps by default, random start.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Context, initial_point, register_attack
from .objective import Objective, localization_objective
from .threat import REQUIRED, ThreatModel


@register_attack("segpgd", kind="gradient", tasks=("localization",), iterative=True, tiny={"steps": 3},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 10, "step_size": None, "random_start": True})
def segpgd(objective: Objective, x: Tensor, threat: ThreatModel, context: Context) -> Tensor:
    """Localization attack weighting correctly and wrongly scored pixels over the steps."""
    t = context.pixel_threshold
    masks = objective.masks.to(x.dtype)
    x_adv = initial_point(x, threat, context, context.random(x.device))
    for k in range(1, threat.steps + 1):
        lam = (k - 1) / (2 * threat.steps)
        x_in = x_adv.detach().requires_grad_(True)
        maps = objective.detector(x_in).map
        with torch.no_grad():
            correct = ((maps > t).float() == masks).float().flatten(1)
        loss = (1 - lam) * localization_objective(maps, masks, correct) + lam * localization_objective(maps, masks, 1 - correct)
        (grad,) = torch.autograd.grad(loss.sum(), x_in)
        x_adv = threat.project(x_adv.detach() + threat.alpha * threat.ascent(grad), x)
    return x_adv.detach()
