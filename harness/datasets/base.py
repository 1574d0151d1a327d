"""Dataset interface: one category at a time, as normal train images and a labelled test set."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustad_bench.core.registry import Registry, admit_subclass


@dataclass
class Split:
    train: Tensor  # (N, 3, H, W) float in [0,1], normal images only
    test: Tensor  # (M, 3, H, W) float in [0,1]
    labels: np.ndarray  # (M,) int, 1 = anomalous
    masks: Tensor | None  # (M, H, W) float in {0,1}; None when the dataset has no masks
    names: list[str]  # (M,) test image ids, e.g. "scratch/003"
    holdout: Tensor | None = None  # normal train images set aside before fitting (threshold: normal-quantile)

    def resized(self, size: int) -> Split:
        """Images resized (bilinear, antialiased) and masks to ``size``×``size`` by the any-pixel
        rule (``resize_mask``): the localization attacks see every annotated defect."""
        if self.test.shape[-1] == size and self.test.shape[-2] == size:
            return self

        def images(x: Tensor) -> Tensor:
            y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            return y.clamp(0, 1)

        masks = None
        if self.masks is not None:
            masks = resize_mask(self.masks, size)
        held = None if self.holdout is None else images(self.holdout)
        return Split(images(self.train), images(self.test), self.labels, masks, self.names, held)


def resize_mask(masks: Tensor, size: int) -> Tensor:
    """(B, H, W) binary masks at ``size``×``size``: a pixel is anomalous when any source pixel
    it covers is (max-pooling when shrinking), so no annotated defect vanishes, however thin;
    nearest neighbour when enlarging. Float in {0, 1}."""
    masks = (masks.float() > 0).float()[:, None]
    if masks.shape[-1] > size or masks.shape[-2] > size:
        masks = F.adaptive_max_pool2d(masks, (size, size))
    if tuple(masks.shape[-2:]) != (size, size):
        masks = F.interpolate(masks, size=(size, size), mode="nearest")
    return masks[:, 0]


@dataclass(frozen=True)
class Counts:
    """Images of one category: normal train, normal test, anomalous test."""

    train: int
    test_normal: int
    test_anomalous: int

    def __str__(self) -> str:
        return f"{self.train} / {self.test_normal} / {self.test_anomalous}"


class Dataset(ABC):
    """A registered dataset; constructor keyword arguments are its YAML keys."""

    name: str = ""
    version: str = "1"
    has_masks: bool = True
    layout: str = ""  # what a user's folder holds (datasets read from one)
    categories: list[str]

    @abstractmethod
    def fingerprint(self, category: str, *, seed: int) -> str:
        """Identifies the exact data ``load`` returns (enters every cache key)."""

    @abstractmethod
    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        """Read (or generate into ``data_dir``) one category."""

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        return []

    def reachable(self) -> bool:
        """Whether the data can be checked here (a user's root exists); generated data always can."""
        return True

    def counts(self, category: str) -> Counts | None:
        """How many images ``load`` gives, without loading them (a suite's projected cost);
        None when unknown."""
        return None

    def check(self, category: str):
        """The category's ``data check`` row (``layout.CheckRow``); None: nothing to check (generated data)."""
        return None


DATASETS: Registry[type[Dataset]] = Registry("dataset", "robustad_bench.datasets", admit=partial(admit_subclass, Dataset),
                                             expected="a Dataset subclass")
register_dataset = DATASETS.register


def digest(obj: object) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_categories(categories: list[str] | None, allowed: list[str]) -> list[str]:
    unknown = [c for c in categories or [] if c not in allowed]
    if unknown:
        return [f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; allowed: {allowed}"]
    return []


def to_tensor(images: np.ndarray) -> Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
