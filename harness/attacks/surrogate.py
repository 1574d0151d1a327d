"""Seed 000's surrogate attack: FGSM/PGD through a linear head on the detector's frozen
features, evaluated on the detector's own score.

AnomalyDINO's kNN score is crafted against indirectly: a logistic-regression head
``w·pool(features(x)) + b`` is fitted to separate normal from anomalous images, and the
perturbation ascends the head's cross-entropy (normals pushed towards "anomalous",
anomalies towards "normal"); the detector itself is never differentiated. The head is
fitted once per cell (``prepare``), never per batch — a batch of one class teaches a head
nothing — and saved with the cell's arrays. What it is fitted on is recorded (``head_data``):

- ``labels``: the cell's whole labelled test set (the paper's white-box-label setting);
- ``pseudo``: no test label is used — the cell's normal training images are class 0 and
  pseudo-anomalies made from them (PatchGuard's rotated-rectangle generator with uniform
  saliency, seeded by the cell) are class 1. The attack step still needs each image's
  label for its direction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad_bench.core.schema import PositiveInt

from .base import CellData, Context, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel


def pooled_features(detector, x: Tensor) -> Tensor:
    """(B, C): ``features(x)`` averaged over space when it is a (B, C, h, w) map."""
    f = detector.features(x)
    return f.flatten(2).mean(-1) if f.dim() > 2 else f


def batched_features(detector, images: Tensor, batch_size: int, device) -> Tensor:
    with torch.no_grad():
        return torch.cat([pooled_features(detector, images[i:i + batch_size].to(device)).float()
                          for i in range(0, len(images), batch_size)])


def fit_head(features: Tensor, targets: Tensor, *, steps: int, lr: float, seed: int) -> tuple[Tensor, Tensor]:
    """Logistic regression (weights (C,), bias ()) on standardised features, by full-batch Adam."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = (0.01 * torch.randn(z.shape[1], generator=generator)).to(z.device).requires_grad_(True)
    b = torch.zeros((), device=z.device, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(z @ w + b, targets) + 1e-3 * w.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # fold the standardisation into the head: logit = f·(w/std) + (b − mean·w/std)
    scale = w.detach() / std
    return scale, b.detach() - (mean * scale).sum()


def prepare_head(detector, data: CellData, threat: ThreatModel, context: Context, *,
                 head_data: str = "labels", head_steps: int = 200, head_lr: float = 0.05) -> dict[str, Tensor]:
    """Fit the cell's head: on the labelled test set, or on train images vs their pseudo-anomalies."""
    if head_data == "labels":
        features = batched_features(detector, data.test, data.batch_size, data.device)
        targets = data.labels.float().to(features.device)
    else:
        from robustad_bench.adapters.pseudo_anomaly import pseudo_anomalies

        train = data.train.cpu()  # one generator over the whole set: independent of batch_size
        fake, _ = pseudo_anomalies(train, torch.ones(train.shape[0], *train.shape[-2:]), torch.Generator().manual_seed(context.seed))
        features = torch.cat([batched_features(detector, images, data.batch_size, data.device) for images in (train, fake)])
        targets = torch.cat([torch.zeros(len(train)), torch.ones(len(fake))]).to(features.device)
    w, b = fit_head(features, targets, steps=head_steps, lr=head_lr, seed=context.seed)
    return {"head_weight": w, "head_bias": b}


@register_attack("surrogate", kind="surrogate", tasks=("detection",), iterative=True, prepare=prepare_head, tiny={"steps": 2, "head_steps": 20},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 1, "step_size": None, "random_start": False})
def surrogate(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
              head_data: Literal["labels", "pseudo"] = "labels", head_steps: PositiveInt = 200, head_lr: float = 0.05) -> Tensor:
    """FGSM (``steps: 1``: α = 2.5ε, clipped to ε) or PGD through the cell's linear head on ``features(x)``."""
    w, b = context.state["head_weight"].to(x.device), context.state["head_bias"].to(x.device)
    target = objective.labels.float()
    x_adv = threat.start(x, context.random(x.device))
    for _ in range(threat.steps):
        x_in = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = pooled_features(objective.detector, x_in) @ w + b
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")  # ascend: mislabel
            (grad,) = torch.autograd.grad(loss, x_in)
        x_adv = threat.project(x_adv.detach() + threat.alpha * threat.ascent(grad), x)
    return x_adv.detach()
