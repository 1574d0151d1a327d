"""Registered datasets: the embedded ``textures`` and ``digits``, and the published
benchmarks read from a user's folder in their own layouts (``robustad-bench list datasets``)."""

from __future__ import annotations

from . import brats, digits, industrial, loco, medical, mvtec, oneclass, textures, visa  # noqa: F401  (registers)
from .base import DATASETS, Dataset, Split, register_dataset

__all__ = ["DATASETS", "Dataset", "Split", "register_dataset"]
