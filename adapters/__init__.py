"""Detector adapters behind one contract (DESIGN §5), and their registry."""

from __future__ import annotations

from . import anomalib_models, anomalib_recent, anomalydino, patchcore, patchguard, smoothed, zarnd  # noqa: F401  (registers)
from .base import AnomalyOutput, Detector
from .registry import (
    DETECTORS,
    create_detector,
    list_detectors,
    register_detector,
)

__all__ = [
    "DETECTORS",
    "AnomalyOutput",
    "Detector",
    "create_detector",
    "list_detectors",
    "register_detector",
]
