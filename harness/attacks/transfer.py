"""Transfer: craft adversarial images on another detector of the suite (``source``, its
label), then score them with the detector under evaluation. The harness fits (or loads
from the cache) the source on the same category and seed and hands it in; the source's
forward/backward passes are counted apart from the target's.
"""

from __future__ import annotations

import inspect
from typing import Literal

from torch import Tensor

from ..errors import UserError
from .base import ATTACKS, Norm, Objective, register_attack, resolve_knowledge


@register_attack("transfer")
def transfer(
    detector, x: Tensor, labels: Tensor, masks: Tensor | None, *,
    source: str, attack: Literal["fgsm", "pgd", "apgd", "square"] = "pgd",
    eps: float, norm: Norm = "linf", steps: int = 10, objective: Objective = "detection",
    knowledge: str | None = None, source_detector=None, seed: int = 0,
) -> Tensor:
    """``attack`` run against ``source_detector``; the target ``detector`` is never queried."""
    resolve_knowledge(objective, knowledge)
    if source_detector is None:
        raise UserError(f"transfer needs the fitted source detector {source!r}; run it through the harness", key="source")
    craft = ATTACKS.get(attack)
    accepted = inspect.signature(craft).parameters
    kwargs = {"eps": eps, "norm": norm, "objective": objective, "seed": seed}
    if "steps" in accepted:
        kwargs["steps"] = steps
    return craft(source_detector, x, labels, masks, **kwargs)
