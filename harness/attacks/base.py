"""The attack registry, attack objectives and L∞/L2 threat-model geometry.

Every attack has one signature (DESIGN §5)::

    attack(detector, x, labels, masks, *, eps, norm, steps, objective, knowledge, seed, ...) -> x_adv

Objectives (seed 002 §3, DESIGN §2), maximised by the attacker:

- ``detection``    mean(y · s(x)), y = +1 normal, −1 anomalous  (knowledge ``label``)
- ``localization`` per image, mean of M(x) over normal pixels − mean over anomalous pixels
                   of the ground-truth mask (PatchGuard's code; its sign per pixel is
                   seed 002's Y · M, balanced so small defects are not outvoted by the
                   background)                                 (knowledge ``mask``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry

AttackFn = Callable[..., Tensor]
ATTACKS: Registry[AttackFn] = Registry("attack")
register_attack = ATTACKS.register

Norm = Literal["linf", "l2"]
Objective = Literal["detection", "localization"]
KNOWLEDGE = {"detection": "label", "localization": "mask"}


def resolve_knowledge(objective: str, knowledge: str | None) -> str:
    needed = KNOWLEDGE[objective]
    if knowledge not in (None, needed):
        raise UserError(
            f"knowledge {knowledge!r} does not fit a white-box {objective} attack; allowed: {needed!r}",
            key="knowledge",
        )
    return needed


def binary_entropy(p: Tensor) -> Tensor:
    """In bits: 1 at p = 0.5, 0 at p ∈ {0, 1}."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def objective_loss(detector, x: Tensor, labels: Tensor, masks: Tensor | None, objective: str, *,
                   calibrator=None, entropy_weight: float = 0.0) -> Tensor:
    """Per-image attacker loss (B,) to maximise.

    With ``entropy_weight`` w > 0 the attacker also knows the defender's calibrator (a map
    from score to P(anomalous)) and subtracts w · H(P): the adversarial images should stay
    confidently scored, so that the entropy flag (seed 000) does not fire on them.
    """
    out = detector(x)
    penalty = 0.0
    if entropy_weight > 0:
        if calibrator is None:
            raise UserError("entropy_weight > 0 needs the defender's calibrator; run the attack through the harness",
                            key="entropy_weight")
        penalty = entropy_weight * binary_entropy(calibrator(out.score))
    if objective == "detection":
        y = 1.0 - 2.0 * labels.to(out.score.dtype)  # +1 normal, −1 anomalous
        return y * out.score - penalty
    if masks is None:
        raise UserError("the localization objective needs pixel masks; this dataset has none", key="objective")
    return localization_objective(out.map, masks.to(out.map.dtype)) - penalty


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


def input_gradient(detector, x: Tensor, labels, masks, objective: str, eot: int = 1, **adaptive) -> tuple[Tensor, Tensor]:
    """(loss (B,), d loss / d x) at ``x``; the detector's own parameters get no gradient.

    ``eot`` > 1 averages loss and gradient over that many forward passes (Expectation over
    Transformation, Athalye et al. 2018): the gradient of a randomised detector's mean.
    """
    x = x.detach().requires_grad_(True)
    if eot == 1:  # the common case, without accumulation kernels on the hot path
        loss = objective_loss(detector, x, labels, masks, objective, **adaptive)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad
    total_loss, total_grad = 0.0, torch.zeros_like(x)
    for _ in range(eot):
        loss = objective_loss(detector, x, labels, masks, objective, **adaptive)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        total_loss, total_grad = total_loss + loss.detach(), total_grad + grad
    return total_loss / eot, total_grad / eot


def per_image_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent direction of unit size in the given norm."""
    return grad.sign() if norm == "linf" else grad / per_image_norm(grad)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the ε-ball around ``x`` intersected with the [0,1] box."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_image_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def keep_best(best: Tensor, best_loss: Tensor | None, x_adv: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the candidate with the higher attacker loss (ties keep ``best``)."""
    if best_loss is None:
        return x_adv, loss
    better = loss > best_loss
    return torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, best), torch.where(better, loss, best_loss)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``generator``: large random tensors are drawn
    where they are used (no host-to-device copy per attack), still fixed by the cell's seed."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    """A uniformly random point of the ε-ball (L∞: uniform box; L2: random direction and radius)."""
    g = device_generator(generator, x.device)
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=g, device=x.device)
        direction = direction / per_image_norm(direction)
        radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=g, device=x.device) * eps
        noise = direction * radius
    return project(x + noise, x, eps, norm)
