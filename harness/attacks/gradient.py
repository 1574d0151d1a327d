"""White-box gradient attacks on anomaly scores and maps: ``none``, ``fgsm``, ``pgd``.

PGD (Madry et al., ICLR 2018) with the anomaly-detection objectives of seed 002 §3; the
default step size α = 2.5·ε/steps is PatchGuard's and ZARND's choice (``ThreatModel``).
With several restarts, each image keeps the restart with the highest final loss.
"""

from __future__ import annotations

from torch import Tensor

from robustad_bench.core.schema import PositiveInt

from .base import Context, initial_point, keep_best, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel


@register_attack("none", kind="none", tasks=("detection",))
def none(objective: Objective, x: Tensor, threat: ThreatModel, context: Context) -> Tensor:
    """The clean run: returns the images unchanged."""
    return x


@register_attack("fgsm", kind="gradient", threat={"norm": "linf", "eps": REQUIRED}, adaptive=True)
def fgsm(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, eot: PositiveInt = 1) -> Tensor:
    """One gradient step of size ε (Goodfellow et al., ICLR 2015)."""
    _, grad = objective.gradient(x, eot)
    return threat.project(x + threat.eps * threat.ascent(grad), x).detach()


@register_attack("pgd", kind="gradient", iterative=True, adaptive=True, tiny={"steps": 3},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 10, "step_size": None, "random_start": True, "restarts": 1})
def pgd(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, eot: PositiveInt = 1) -> Tensor:
    """Projected gradient ascent on the objective inside the ε-ball."""
    rng = context.random(x.device)
    best, best_loss = x.detach(), None
    for restart in range(threat.restarts):
        x_adv = initial_point(x, threat, context, rng) if restart == 0 else threat.start(x, rng)
        for _ in range(threat.steps):
            _, grad = objective.gradient(x_adv, eot)
            x_adv = threat.project(x_adv + threat.alpha * threat.ascent(grad), x).detach()
        if threat.restarts == 1:
            return x_adv
        best, best_loss = keep_best(best, best_loss, x_adv, objective(x_adv))
    return best
