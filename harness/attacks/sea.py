"""SEA — Segmentation Ensemble Attack (Croce, Singh, Hein 2024, "Towards reliable evaluation
and fast training of robust semantic segmentation models"; seed 002 Table 4, ref. [18]),
adapted to anomaly maps as seed 002 App. H does.

Each pixel of the anomaly map is a two-class prediction: logits ``[-(m − t)/2, (m − t)/2]``
with t the clean pixel threshold, label = the ground-truth mask (the attacker knows it).
SEA runs APGD once per loss, each complementary to the others:

- ``balanced-ce``       cross-entropy with each class (normal / anomalous pixels) weighted
                        to half of the image's loss;
- ``masked-ce``         cross-entropy of the pixels still classified correctly only;
- ``js``                Jensen–Shannon divergence between the pixel's softmax and its label;
- ``masked-spherical``  −p_y / ‖p‖₂ (the spherical score of the true class) on the pixels
                        still classified correctly,

each with progressive radius reduction (the authors' ``apgd_largereps``): 30 % of the steps
at 2ε, 30 % at 1.5ε, the rest at ε, every stage starting from the last one's images
projected onto its ball; the first starts from the clean images. Per image, SEA keeps the
run that is worst for the defender — here by the localization objective every map attack
climbs (mean map over normal pixels − over anomalous ones), not by pixel accuracy, since
pixel AUROC is what the leaderboard reports. ``steps`` is per loss (the paper uses 300).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .apgd import single_run
from .base import Context, keep_best, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel

LOSSES = ("balanced-ce", "masked-ce", "js", "masked-spherical")
RADII = ((2.0, 0.3), (1.5, 0.3), (1.0, None))  # (ε multiple, share of the steps; None: the rest)


def pixel_losses(logit: Tensor, masks: Tensor, name: str) -> Tensor:
    """(B,) per-image loss from per-pixel anomalous logits (B, H, W) and labels (B, H, W)."""
    y = masks.flatten(1)
    z = logit.flatten(1)
    ce = F.softplus(torch.where(y > 0, -z, z))  # −log p(label)
    correct = ((z > 0).float() == y).float().detach()
    if name == "balanced-ce":
        anomalous, normal = y, 1 - y
        return (ce * normal).sum(1) / normal.sum(1).clamp_min(1) + (ce * anomalous).sum(1) / anomalous.sum(1).clamp_min(1)
    if name == "masked-ce":
        return (ce * correct).mean(1)
    p1 = torch.sigmoid(z)
    p = torch.stack([1 - p1, p1], dim=-1)  # (B, HW, 2)
    onehot = torch.stack([1 - y, y], dim=-1)
    if name == "js":
        m = (p + onehot) / 2
        kl = lambda a: (a * (a.clamp_min(1e-12).log() - m.clamp_min(1e-12).log())).sum(-1)  # noqa: E731
        return ((kl(p) + kl(onehot)) / 2).mean(1)
    p_true = (p * onehot).sum(-1)
    return (-p_true / p.norm(dim=-1) * correct).mean(1)


@dataclass(frozen=True)
class MapLoss(Objective):
    """One of SEA's pixel losses as an objective (what APGD climbs)."""

    pixel_threshold: float = 0.0
    name: str = "balanced-ce"

    def loss(self, x: Tensor) -> Tensor:
        maps = self.detector(x).map
        return pixel_losses(maps - self.pixel_threshold, self.masks.to(maps.dtype), self.name)


def reduced_radius_run(loss: MapLoss, x: Tensor, threat: ThreatModel) -> Tensor:
    """APGD with progressive radius reduction: 2ε → 1.5ε → ε, each stage from the last."""
    current, done = x.detach(), 0
    for multiple, share in RADII:
        steps = threat.steps - done if share is None else max(1, int(share * threat.steps))
        stage = ThreatModel(threat.norm, multiple * threat.eps, steps=steps)
        current, _ = single_run(loss, x, stage, stage.project(current, x), eot=1)
        done += steps
    return current


def check_losses(losses: str = "+".join(LOSSES), steps: int = 300, **_) -> list[tuple[str, str]]:
    unknown = [name for name in losses.split("+") if name not in LOSSES]
    problems = [("losses", f"unknown SEA loss(es) {unknown}; allowed: {'+'.join(LOSSES)}")] if unknown else []
    if steps < len(RADII):
        problems.append(("steps", f"SEA splits its steps over {len(RADII)} radii: give at least {len(RADII)}"))
    return problems


def schedule(threat: ThreatModel, *, losses: str = "+".join(LOSSES), **_) -> dict:
    return {"alpha": None, "losses": losses.split("+"),
            "step_rule": "APGD per loss (adaptive η from 2ε), radius " + " → ".join(f"{m:g}ε" for m, _ in RADII)}


@register_attack("sea", kind="gradient", tasks=("localization",), iterative=True, check=check_losses, schedule=schedule, tiny={"steps": 3},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 300})
def sea(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
        losses: str = "+".join(LOSSES)) -> Tensor:
    """APGD on each of SEA's losses with progressive radius reduction; worst case per image."""
    best, best_loss = x.detach(), None
    for name in losses.split("+"):
        loss = MapLoss(**{f.name: getattr(objective, f.name) for f in dataclasses.fields(Objective)},
                       pixel_threshold=context.pixel_threshold, name=name)
        x_adv = reduced_radius_run(loss, x, threat)
        best, best_loss = keep_best(best, best_loss, x_adv, objective(x_adv))
    return best
