"""Registered attacks (one signature, DESIGN §5) and their objectives."""

from __future__ import annotations

from . import apgd, blackbox, ensemble, gradient, segpgd, surrogate, transfer  # noqa: F401  (registers)
from .base import ATTACKS, KNOWLEDGE, objective_loss, project, register_attack

__all__ = ["ATTACKS", "KNOWLEDGE", "objective_loss", "project", "register_attack"]
