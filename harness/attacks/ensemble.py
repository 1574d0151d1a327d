"""FAB through the two-logit wrapper, and the AD-adapted AutoAttack ensemble.

torchattacks' DLR, targeted APGD and targeted FAB index the third-largest logit and fail on
two classes (REFERENCE-NOTES), and the official AutoAttack keeps only still-correct
samples (robust-accuracy semantics, not AUROC). ``autoattack`` is therefore the ensemble
seed 002 App. H uses — "AutoAttack-AD": APGD-CE, FAB, Square and PGD in place of the DLR
parts (a two-class problem has no third logit for DLR), keeping per image the worst case
over the parts (the highest score for a normal image, the lowest for an anomaly).
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustad_bench.core.schema import PositiveInt

from .base import ATTACKS, Context, keep_best, register_attack
from .objective import Objective
from .official import TwoLogits, global_seed
from .recall import recalled_part
from .rng import image_seed
from .threat import REQUIRED, Norm, ThreatModel

PARTS = ("apgd", "fab", "square", "pgd")
TITLE = "AutoAttack-AD (APGD-CE, FAB, Square, PGD for DLR)"
NOTE = ("Not standard AutoAttack: a detector is a two-class model (normal, anomalous), and AutoAttack's "
        "APGD-DLR, targeted APGD and targeted FAB need a third logit, so PGD takes the DLR parts' place "
        "(seed 002, App. H). Per image the worst case over the parts is kept (AUROC needs every image's "
        "attacked score), not AutoAttack's robust-accuracy cascade.")


def _fab_batch(objective: Objective, x: Tensor, threat: ThreatModel, threshold: float, seed: int) -> Tensor:
    import torchattacks  # imported on use: torchattacks pulls in torchvision

    attack = torchattacks.FAB(TwoLogits(objective.detector, threshold), norm="Linf" if threat.norm == Norm.LINF else "L2",
                              eps=threat.eps, steps=threat.steps, n_restarts=threat.restarts, seed=seed, n_classes=2)
    with global_seed(seed, x):  # FAB seeds torch's global generator itself
        # FAB .view()s its tensors: hand it a standard-layout copy (resized images may be channels-last)
        return attack(x.contiguous(), objective.labels.long()).detach()


@register_attack("fab", kind="gradient", tasks=("detection",), iterative=True, tiny={"steps": 3},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 10, "restarts": 1})
def fab(objective: Objective, x: Tensor, threat: ThreatModel, context: Context) -> Tensor:
    """torchattacks' untargeted FAB (Croce & Hein 2020): the smallest perturbation inside the
    ε-ball that crosses the decision boundary at the clean threshold. Its first restart is
    deterministic; with ``restarts`` > 1 the random restarts are drawn per image (one image
    at a time, seeded by its id)."""
    if threat.restarts == 1:
        return _fab_batch(objective, x, threat, context.threshold, context.seed)
    out = [_fab_batch(objective.subset(torch.tensor([i])), x[i:i + 1], threat, context.threshold,
                      image_seed(context.seed, image)) for i, image in enumerate(context.images)]
    return torch.cat(out)


def check_parts(parts: str = "+".join(PARTS), objective: str = "detection", **_) -> list[tuple[str, str]]:
    """(key, problem) pairs for an autoattack point; the suite check runs it at validation."""
    unknown = [p for p in parts.split("+") if p not in PARTS]
    if unknown:
        return [("parts", f"unknown autoattack part(s) {unknown}; allowed: {'+'.join(PARTS)}")]
    image_level = [p for p in parts.split("+") if objective not in ATTACKS.get(p).tasks]
    if image_level:
        usable = "+".join(p for p in PARTS if objective in ATTACKS.get(p).tasks)
        return [("parts", f"part(s) {image_level} cannot attack the {objective} objective; use parts: {usable}")]
    return []


def ensemble_parts(threat: ThreatModel, *, queries: int = 1000, parts: str = "+".join(PARTS), **_) -> list[tuple]:
    """(spec, threat model, options) of each part, in the order they run."""
    return [(ATTACKS.get(part), part_threat(part, threat, queries), {}) for part in parts.split("+")]


def schedule(threat: ThreatModel, **options) -> dict:
    return {"parts": {spec.name: spec.what_ran(part, kwargs) for spec, part, kwargs in ensemble_parts(threat, **options)}}


def part_threat(part: str, threat: ThreatModel, queries: int) -> ThreatModel:
    """A part's threat model: ``queries`` for a score-only part, the ensemble's steps otherwise."""
    spec = ATTACKS.get(part)
    steps = queries if spec.kind == "score-only" else threat.steps
    return spec.threat_model({"norm": threat.norm, "eps": threat.eps, "steps": steps})


@register_attack("autoattack", kind="gradient", iterative=True, check=check_parts, schedule=schedule, parts=ensemble_parts,
                 tiny={"steps": 2, "queries": 6},
                 threat={"norm": "linf", "eps": REQUIRED, "steps": 100}, title=TITLE, note=NOTE)
def autoattack(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *,
               queries: PositiveInt = 1000, parts: str = "apgd+fab+square+pgd") -> Tensor:
    """Worst case per image over APGD, FAB, Square (``queries`` queries) and PGD (``steps`` each);
    ``parts`` picks a subset, e.g. ``apgd+square+pgd`` (the localization objective: FAB is image-level).
    A part that a cell of the same group already ran on these images (same threat model,
    options and objective) is taken from it (``recall``), not run again: the same images."""
    best, best_loss = x.detach(), None
    for spec, part, options in ensemble_parts(threat, queries=queries, parts=parts):
        x_adv = recalled_part(context, spec, part, options, objective.config(), x)
        if x_adv is None:
            x_adv = spec.run(objective, x, part, context, **options)
        best, best_loss = keep_best(best, best_loss, x_adv, objective(x_adv))
    return best
