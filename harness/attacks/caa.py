"""CAA — Composite Adversarial Attacks (Mao et al., AAAI 2021; seed 002 Table 4, ref. [55]).

CAA searches for a *policy*: a sequence of attacks, each starting from the previous one's
output and all inside the same ε-ball; an image counts as broken if any stage breaks it.
Here the policy is a string of registered gradient attacks with their steps, applied in
order, each from the previous stage's images, keeping per image the worst case over the
stages (by the attacker's objective):

    policy: "apgd:50 > apgd:25 > apgd:125"

The default, ``policy: paper``, is the paper's best found policy for the threat model's
norm (the authors' ``test_attacker.py``):

- L∞: MultiTargeted(50) → MultiTargeted(25) → CW-L∞ with APGD's adaptive step (125).
  With two classes a multi-targeted attack has one target, the other class, and its loss,
  like the CW margin, is a monotone function of y·s: all three stages are APGD on our
  objective, so the default is ``apgd:50 > apgd:25 > apgd:125``.
- L2: MultiTargeted(100) → PGD with adaptive step (25) → DDN (1000). DDN, a minimal-norm
  attack, is replaced by FAB, the minimal-norm attack we have: ``apgd:100 > pgd:25 > fab:1000``
  (FAB is detection-only, so an L2 localization CAA needs an explicit policy).

A stage that cannot start from given images (FAB) runs from the clean ones; its result
still enters the worst case. The paper's per-stage magnitudes (e.g. 0.4375 for its L2 PGD stage at ε = 0.5) are not
modelled: every stage uses the cell's ε.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .base import ATTACKS, Context, attacks_for, keep_best, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel

PAPER_POLICY = {"linf": "apgd:50 > apgd:25 > apgd:125", "l2": "apgd:100 > pgd:25 > fab:1000"}


def parse_policy(policy: str) -> list[tuple[str, int]]:
    """``"apgd:50 > pgd:25"`` → [("apgd", 50), ("pgd", 25)]; raises ValueError on bad syntax."""
    stages = []
    for stage in policy.split(">"):
        name, _, steps = stage.strip().partition(":")
        if not name or not steps.strip().isdigit() or int(steps) < 1:
            raise ValueError(f"stage {stage.strip()!r} is not NAME:STEPS (e.g. apgd:50)")
        stages.append((name, int(steps)))
    return stages


def stages_of(policy: str, norm: str) -> list[tuple[str, int]]:
    return parse_policy(PAPER_POLICY[norm] if policy == "paper" else policy)


def check_policy(policy: str = "paper", norm: str = "linf", objective: str = "detection", **_) -> list[tuple[str, str]]:
    usable = [n for n in attacks_for(("gradient",), objective, threat_field="steps") if n != "caa"]
    try:
        stages = stages_of(policy, norm)
    except ValueError as err:
        return [("policy", f"{err}; a policy is stages joined by '>', e.g. {PAPER_POLICY['linf']!r}")]
    bad = sorted({name for name, _ in stages if name not in usable})
    if bad:
        return [("policy", f"stage attack(s) {bad} cannot run a {norm} {objective} stage; allowed: {', '.join(usable)}")]
    return []


def schedule(threat: ThreatModel, *, policy: str = "paper", **_) -> dict:
    stages = []
    for name, steps in stages_of(policy, threat.norm):
        spec = ATTACKS.get(name)
        stages.append({"attack": name, **spec.what_ran(spec.threat_model({"norm": threat.norm, "eps": threat.eps, "steps": steps}), {})})
    return {"steps": sum(stage["steps"] for stage in stages), "stages": stages}


@register_attack("caa", kind="gradient", check=check_policy, threat={"norm": "linf", "eps": REQUIRED}, schedule=schedule, tiny={"policy": "apgd:3 > pgd:2"},
                 title="CAA", note="Composite Adversarial Attack (Mao et al. 2021): the paper's best L∞/L2 "
                 "policy (policy: paper) with each stage mapped to the two-class attack it reduces to, or the suite's own.")
def caa(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, policy: str = "paper") -> Tensor:
    """Stages of ``policy`` (``paper``: the paper's for the norm) chained; worst case per image."""
    best, best_loss, previous = x.detach(), None, None
    for name, steps in stages_of(policy, threat.norm):
        spec = ATTACKS.get(name)
        stage = spec.threat_model({"norm": threat.norm, "eps": threat.eps, "steps": steps})
        previous = spec.run(objective, x, stage, dataclasses.replace(context, start=previous))
        best, best_loss = keep_best(best, best_loss, previous, objective(previous))
    return best
