"""Seed 000's surrogate attack: FGSM/PGD through a linear head on the detector's frozen
features, evaluated on the detector's own score.

AnomalyDINO's kNN score is crafted against indirectly: a logistic-regression head
``w·pool(features(x)) + b`` is fitted to separate normal from anomalous images, and the
perturbation ascends the head's cross-entropy (normals pushed towards "anomalous",
anomalies towards "normal"); the detector itself is never differentiated. What the head
is fitted on is recorded in the cell (``head_data``):

- ``labels``: the attacked batch with its true labels (the paper's white-box-label setting);
- ``pseudo``: labels are not used to fit the head — the batch's images are class 0 and
  pseudo-anomalies made from them (PatchGuard's rotated-rectangle generator with uniform
  saliency) are class 1. The attack step still needs each image's label for its direction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Norm, ascent_direction, project, register_attack
from .base import random_start as sample_start


def pooled_features(detector, x: Tensor) -> Tensor:
    """(B, C): ``features(x)`` averaged over space when it is a (B, C, h, w) map."""
    f = detector.features(x)
    return f.flatten(2).mean(-1) if f.dim() > 2 else f


def fit_head(features: Tensor, targets: Tensor, *, steps: int, lr: float, seed: int) -> tuple[Tensor, Tensor]:
    """Logistic regression (weights (C,), bias ()) on standardised features, by Adam."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = (0.01 * torch.randn(z.shape[1], generator=generator)).to(z.device).requires_grad_(True)
    b = torch.zeros((), device=z.device, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(z @ w + b, targets) + 1e-3 * w.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # fold the standardisation into the head: logit = f·(w/std) + (b − mean·w/std)
    scale = w.detach() / std
    return scale, b.detach() - (mean * scale).sum()


@register_attack("surrogate")
def surrogate(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 1, step_size: float | None = None,
    random_start: bool = False, head_data: Literal["labels", "pseudo"] = "labels",
    head_steps: int = 200, head_lr: float = 0.05,
    knowledge: Literal["surrogate"] = "surrogate", seed: int = 0,
) -> Tensor:
    """FGSM (``steps: 1``, step ε) or PGD through a linear head on ``features(x)``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if head_data == "labels":
            feats, targets = pooled_features(detector, x), labels.float()
        else:
            from robustad_bench.adapters.pseudo_anomaly import pseudo_anomalies

            fake, _ = pseudo_anomalies(x, torch.ones(x.shape[0], *x.shape[-2:], device=x.device), generator)
            feats = torch.cat([pooled_features(detector, x), pooled_features(detector, fake)])
            targets = torch.cat([torch.zeros(x.shape[0]), torch.ones(x.shape[0])]).to(x.device)
    w, b = fit_head(feats.float(), targets, steps=head_steps, lr=head_lr, seed=seed)
    alpha = (eps if steps == 1 else 2.5 * eps / steps) if step_size is None else step_size
    x_adv = sample_start(x, eps, norm, generator) if random_start else x.detach()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = pooled_features(detector, x_adv) @ w + b
        loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")  # ascend: mislabel
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project(x_adv.detach() + alpha * ascent_direction(grad, norm), x, eps, norm)
    return x_adv.detach()
