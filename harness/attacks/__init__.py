"""Registered attacks (one contract, DESIGN §5): objective, threat model, context in; images out."""

from __future__ import annotations

from . import (  # noqa: F401  (registers)
    a3,
    apgd,
    blackbox,
    caa,
    certificate,
    ensemble,
    gradient,
    sea,
    segpgd,
    simba,
    surrogate,
    transfer,
)
from .base import (
    ATTACKS,
    KNOWLEDGE,
    AttackSpec,
    CellData,
    Context,
    PreparedAttack,
    prepare_attack,
    register_attack,
    run_attack,
)
from .objective import Objective, localization_objective
from .threat import ThreatModel, project

__all__ = ["ATTACKS", "KNOWLEDGE", "AttackSpec", "CellData", "Context", "Objective", "PreparedAttack", "ThreatModel",
           "prepare_attack",
           "localization_objective", "project", "register_attack", "run_attack"]
