"""Registered datasets: embedded ``textures`` and ``digits``, and ``mvtec`` for any MVTec-layout folder."""

from __future__ import annotations

from . import digits, mvtec, textures  # noqa: F401  (registers)
from .base import DATASETS, Dataset, Split, register_dataset

__all__ = ["DATASETS", "Dataset", "Split", "register_dataset"]
