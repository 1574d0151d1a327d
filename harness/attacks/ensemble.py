"""Library attacks through a two-logit wrapper, and the AD-adapted AutoAttack ensemble.

``TwoLogits`` turns a detector into the binary classifier torchattacks expects: logits
``[-(s − t)/2, (s − t)/2]``, class 1 = anomalous, decision boundary at the clean
threshold t (the F1 threshold fixed on the clean run; the batch's median clean score when
the test set has a single class). Its softmax cross-entropy is a monotone function of
``y·(s − t)``, so the library's losses climb the same objective as ours.

torchattacks' DLR, targeted APGD and targeted FAB index the third-largest logit and fail on
two classes (REFERENCE-NOTES), and its AutoAttack keeps only still-correct samples
(robust-accuracy semantics, not AUROC). ``autoattack`` is therefore the ensemble seed 002
App. H uses: APGD-CE, FAB, Square and PGD in place of the DLR parts, keeping per image the
worst case over the parts (the highest score for a normal, the lowest for an anomaly).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import UserError
from .apgd import apgd
from .base import Norm, keep_best, objective_loss, register_attack, resolve_knowledge
from .blackbox import square
from .gradient import pgd


class TwoLogits(nn.Module):
    """A detector as a two-class classifier: logits (B, 2), class 1 = anomalous."""

    def __init__(self, detector: nn.Module, threshold: float):
        super().__init__()
        self.detector = detector
        self.threshold = threshold

    def forward(self, x: Tensor) -> Tensor:
        s = self.detector(x).score - self.threshold
        return torch.stack([-s / 2, s / 2], dim=1)


def decision_threshold(detector, x: Tensor, threshold: float | None) -> float:
    if threshold is not None:
        return float(threshold)
    with torch.no_grad():
        return float(detector(x).score.median())


@register_attack("fab")
def fab(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 10, restarts: int = 1,
    objective: Literal["detection"] = "detection", knowledge: str | None = None,
    threshold: float | None = None, seed: int = 0,
) -> Tensor:
    """torchattacks' untargeted FAB (Croce & Hein 2020): the smallest perturbation inside the
    ε-ball that crosses the decision boundary at the clean threshold. Detection objective."""
    import torchattacks  # imported on use: torchattacks pulls in torchvision

    resolve_knowledge("detection", knowledge)
    model = TwoLogits(detector, decision_threshold(detector, x, threshold))
    attack = torchattacks.FAB(model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps,
                              n_restarts=restarts, seed=seed, n_classes=2)
    # FAB .view()s its tensors: hand it a standard-layout copy (resized images may be channels-last)
    return attack(x.contiguous(), labels.long()).detach()


@register_attack("autoattack")
def autoattack(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    eps: float, norm: Norm = "linf", steps: int = 100, queries: int = 1000,
    parts: str = "apgd+fab+square+pgd", objective: Literal["detection"] = "detection",
    knowledge: str | None = None, threshold: float | None = None, seed: int = 0,
) -> Tensor:
    """Worst case per image over APGD, FAB, Square (``queries`` queries) and PGD (``steps`` each);
    ``parts`` picks a subset, e.g. ``apgd+square``."""
    resolve_knowledge("detection", knowledge)
    if problems := check_parts(parts):
        raise UserError(problems[0][1], key="parts")
    runs = {
        "apgd": lambda: apgd(detector, x, labels, masks, eps=eps, norm=norm, steps=steps, seed=seed),
        "fab": lambda: fab(detector, x, labels, masks, eps=eps, norm=norm, steps=steps, threshold=threshold, seed=seed),
        "square": lambda: square(detector, x, labels, masks, eps=eps, norm=norm, steps=queries, seed=seed),
        "pgd": lambda: pgd(detector, x, labels, masks, eps=eps, norm=norm, steps=steps, seed=seed),
    }
    best, best_loss = x.detach(), None
    for part in parts.split("+"):
        x_adv = runs[part]()
        with torch.no_grad():
            loss = objective_loss(detector, x_adv, labels, masks, "detection")
        best, best_loss = keep_best(best, best_loss, x_adv, loss)
    return best


PARTS = ("apgd", "fab", "square", "pgd")


def check_parts(parts: str = "+".join(PARTS), **_) -> list[tuple[str, str]]:
    """(key, problem) pairs for an autoattack point; the suite check runs it at validation."""
    unknown = [p for p in parts.split("+") if p not in PARTS]
    return [("parts", f"unknown autoattack part(s) {unknown}; allowed: {'+'.join(PARTS)}")] if unknown else []


autoattack.check_config = check_parts
