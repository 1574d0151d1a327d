"""The attacker's objective as a value: a per-image loss to maximise (seed 002 §3, DESIGN §2).

- ``detection``    y · s(x), y = +1 normal, −1 anomalous                (knowledge ``label``)
- ``localization`` per image, mean of M(x) over normal pixels − mean over anomalous pixels
                   of the ground-truth mask (PatchGuard's code; its sign per pixel is
                   seed 002's Y · M, balanced so small defects are not outvoted by the
                   background)                                         (knowledge ``mask``)

The harness builds one ``Objective`` per batch from the detector, the batch's labels and
masks, the task and — for an attacker who knows the entropy flag (seed 000) — the
defender's calibrator. Every loss is per image: an image's loss never depends on the other
images of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustad_bench.core.errors import UserError

Task = Literal["detection", "localization"]
TASKS: tuple[str, ...] = ("detection", "localization")


def binary_entropy(p: Tensor) -> Tensor:
    """In bits: 1 at p = 0.5, 0 at p ∈ {0, 1}."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def localization_objective(maps: Tensor, masks: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per image (B,): mean map over normal pixels − mean over anomalous pixels of ``masks``
    (1 = anomalous), each pixel counted with its ``weights`` (B, H*W) when given."""
    anomalous = masks.flatten(1)  # (B, H*W)
    normal = 1.0 - anomalous
    if weights is not None:
        anomalous, normal = anomalous * weights, normal * weights
    m = maps.flatten(1)
    normal_mean = (m * normal).sum(1) / normal.sum(1).clamp_min(1.0)
    anomalous_mean = (m * anomalous).sum(1) / anomalous.sum(1).clamp_min(1.0)  # 0 without defect
    return normal_mean - anomalous_mean


@contextmanager
def straight_through(detector: nn.Module, on: bool):
    """BPDA (Athalye et al. 2018) while ``on``: every module of ``detector`` that declares a
    ``straight_through`` switch (a non-differentiable stage with a differentiable stand-in,
    e.g. AnomalyDINO's foreground mask) keeps its exact forward values and differentiates the
    stand-in. Restored afterwards, whatever happens."""
    modules = [m for m in detector.modules() if hasattr(m, "straight_through")] if on else []
    before = [m.straight_through for m in modules]
    for module in modules:
        module.straight_through = True
    try:
        yield
    finally:
        for module, value in zip(modules, before):
            module.straight_through = value


@dataclass(frozen=True)
class Objective:
    """What the attacker maximises on one batch; call it for the per-image loss (B,)."""

    detector: nn.Module
    labels: Tensor  # (B,) 1 = anomalous
    masks: Tensor | None  # (B, H, W) 1 = anomalous pixel
    task: Task = "detection"
    calibrator: Callable[[Tensor], Tensor] | None = None  # score → P(anomalous), the defender's
    entropy_weight: float = 0.0
    bpda: bool = False  # differentiate the detector's straight-through surrogates (``straight_through``)

    def __post_init__(self):
        if self.task == "localization" and self.masks is None:
            raise UserError("the localization objective needs pixel masks; this dataset has none", key="objective")
        if self.entropy_weight > 0 and self.calibrator is None:
            raise UserError("entropy_weight > 0 needs the defender's calibrator; run the attack through the harness",
                            key="entropy_weight")

    @property
    def sign(self) -> Tensor:
        """(B,) +1 for normal images, −1 for anomalous ones: the direction the score is pushed."""
        return 1.0 - 2.0 * self.labels.float()

    def loss(self, x: Tensor) -> Tensor:
        """(B,) loss, differentiable when autograd is on. With ``entropy_weight`` w > 0 the
        attacker also subtracts w · H(P): adversarial images should stay confidently scored,
        so that the entropy flag (seed 000) does not fire on them."""
        with straight_through(self.detector, self.bpda):
            out = self.detector(x)
        if self.task == "detection":
            loss = self.sign.to(out.score) * out.score
        else:
            loss = localization_objective(out.map, self.masks.to(out.map.dtype))
        if self.entropy_weight > 0:
            loss = loss - self.entropy_weight * binary_entropy(self.calibrator(out.score))
        return loss

    def config(self) -> dict[str, Any]:
        """What the attacker maximises, as values (``AttackSpec.objective_config`` of its point)."""
        return {"task": self.task, "entropy_weight": float(self.entropy_weight), "bpda": bool(self.bpda)}

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.loss(x)

    def gradient(self, x: Tensor, eot: int = 1) -> tuple[Tensor, Tensor]:
        """(loss (B,), d loss / d x) at ``x``; the detector's own parameters get no gradient.

        ``eot`` > 1 averages loss and gradient over that many forward passes (Expectation over
        Transformation, Athalye et al. 2018): the gradient of a randomised detector's mean.
        """
        total_loss, total_grad = None, None
        for _ in range(eot):
            x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self.loss(x_in)
                if not loss.requires_grad:
                    raise UserError("the detector's output has no gradient with respect to its input (torch.no_grad, "
                                    ".detach(), .item() or numpy in forward?); gradient attacks need a differentiable "
                                    "forward, score-only attacks (square, simba) do not", key="detector")
                (grad,) = torch.autograd.grad(loss.sum(), x_in)
            if total_loss is None:
                total_loss, total_grad = loss.detach(), grad
            else:
                total_loss, total_grad = total_loss + loss.detach(), total_grad + grad
        return (total_loss, total_grad) if eot == 1 else (total_loss / eot, total_grad / eot)

    def on(self, detector: nn.Module) -> Objective:
        """The same objective against another detector (a transfer attack's source)."""
        return dataclasses.replace(self, detector=detector)

    def subset(self, keep: Tensor) -> Objective:
        """The objective of the images at positions ``keep`` only."""
        masks = None if self.masks is None else self.masks[keep]
        return dataclasses.replace(self, labels=self.labels[keep], masks=masks)
