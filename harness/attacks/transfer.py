"""Transfer: craft adversarial images on another detector of the suite (``source``, its
label), then score them with the detector under evaluation. The harness fits (or loads
from the cache) the source on the same category and seed and hands it in through the
context; the source's forward/backward passes are counted apart from the target's.

``attack`` names any registered gradient or score-only attack that supports the task; it
runs with its own defaults and this entry's norm, ε and steps.
"""

from __future__ import annotations

from torch import Tensor

from robustad_bench.core.errors import UserError

from .base import ATTACKS, Context, attacks_for, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel

CRAFTING_KINDS = ("gradient", "score-only")


def check_crafting(attack: str = "pgd", objective: str = "detection", **_) -> list[tuple[str, str]]:
    usable = attacks_for(CRAFTING_KINDS, objective)
    if attack not in usable:
        return [("attack", f"transfer crafts with a gradient or score-only {objective} attack, got {attack!r}; "
                           f"allowed: {', '.join(usable)}")]
    return []


@register_attack("transfer", kind="transfer", iterative=True, check=check_crafting, tiny={"steps": 2},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 10})
def transfer(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
             source: str, attack: str = "pgd") -> Tensor:
    """``attack`` run against the context's source detector; the target is never queried."""
    if context.source is None:
        raise UserError(f"transfer needs the fitted source detector {source!r}; run it through the harness", key="source")
    spec = ATTACKS.get(attack)
    craft_threat = spec.threat_model({"norm": threat.norm, "eps": threat.eps, "steps": threat.steps})
    return spec.run(objective.on(context.source), x, craft_threat, context)
