"""The detector registry and its user-facing factories."""

from __future__ import annotations

from functools import partial
from typing import Any

from robustad_bench.core.registry import Registry, admit_subclass

from .base import Detector

DETECTORS: Registry[type[Detector]] = Registry("detector", "robustad_bench.detectors",
                                                admit=partial(admit_subclass, Detector), expected="a Detector subclass")
register_detector = DETECTORS.register


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build a registered detector; ``None`` kwargs are dropped so defaults apply."""
    cls = DETECTORS.get(name)
    return cls(**{k: v for k, v in kwargs.items() if v is not None})


def list_detectors(pattern: str = "*") -> list[str]:
    return DETECTORS.names(pattern)
