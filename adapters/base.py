"""The detector contract (DESIGN §5) every adapter implements.

Images enter in [0,1], shape (B,3,H,W); normalisation happens inside the detector so that
attack budgets are always in pixel units. ``forward`` must stay differentiable w.r.t. the
input: no ``no_grad``, numpy or faiss on the gradient path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Precision = Literal["fp32", "bf16"]  # a detector's ``precision`` key


class AnomalyOutput(NamedTuple):
    score: Tensor  # (B,) image anomaly score, higher = more anomalous
    map: Tensor  # (B, H, W) anomaly map at input resolution


class Detector(nn.Module, ABC):
    """Base class: subclasses set ``name``, ``version`` and ``input_size``.

    ``weights`` is the provenance shown on the leaderboard:
    ``"random"`` (random init, labelled as such), ``"timm:<model>"`` or a checkpoint path.
    """

    name: str = ""
    version: str = "0"
    input_size: int = 224
    weights: str = "random"
    localization: bool = True  # False: ``map`` is the score broadcast; pixel metrics are n/a
    differentiable: bool = True  # False: no input gradient (score-only admission): only attacks that need none run on it
    certifiable: bool = False  # True: ``samples`` gives noisy base outputs a certificate cell bounds (``smoothed``)
    precision: str = "fp32"  # bf16: the network runs under autocast; scores, maps and kNN distances stay fp32
    tiny: dict = {}  # constructor keys of a configuration that fits and scores in seconds on a CPU (as timm registers variants)
    weight_keys: tuple[tuple[str, str], ...] = (("backbone", "weights"),)  # (architecture key, weights key) per network it loads

    @classmethod
    def weights_needed(cls, **kwargs) -> list[str]:
        """The pretrained weights an entry with these constructor keys loads (defaults filled in):
        ``timm:<architecture>``, ``robustness:<name>`` or a checkpoint path; ``random`` needs none."""
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        config = {**defaults, **kwargs}
        needed = []
        for arch_key, weights_key in cls.weight_keys:
            weights = config.get(weights_key)
            if not isinstance(weights, str) or weights == "random" or arch_key not in config:
                continue
            needed.append(f"timm:{config[arch_key]}" if weights == "timm" else weights)
        return needed

    @classmethod
    def declared(cls, key: str, **kwargs) -> Any:
        """A trait the harness reads before building the detector (``localization``,
        ``differentiable``) for an entry with these keys: the class attribute; a wrapper
        (``smoothed``) answers for its base."""
        return getattr(cls, key)

    @classmethod
    def fits_from(cls, **kwargs) -> tuple[str, dict] | None:
        """The detector entry (registered name, constructor keys) whose fit is this one's fit
        (a wrapper's base), else None. The harness fits that entry once — shared with a plain entry of the same
        keys and with other wrappers of it — and hands it to ``adopt``."""
        return None

    def adopt(self, fitted: nn.Module, *, seed: int) -> None:
        """Take the fitted ``fits_from`` detector in place of ``fit`` (same result)."""
        raise NotImplementedError(f"{type(self).__name__} declares no fits_from entry")

    def set_category(self, category: str) -> None:
        """Called before ``fit`` (and before loading a fitted state) with the category's name,
        for methods whose settings depend on it (AnomalyDINO's per-category masking)."""

    def train(self, mode: bool = True):
        """A frozen pretrained ``self.backbone`` always runs in eval mode (BatchNorm
        statistics and dropout stay fixed), whatever mode the detector is in."""
        super().train(mode)
        if isinstance(getattr(self, "backbone", None), nn.Module):
            self.backbone.eval()
        return self

    def autocast(self, x: Tensor) -> AbstractContextManager:
        """Where the network runs: under bfloat16 autocast with ``precision: bf16`` (on the
        device of ``x``), else as is. Subclasses wrap their network calls in it and return
        float32 features, so the kNN distances and scores are computed in float32."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @abstractmethod
    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        """Build the fitted state (memory bank, trained weights) from normal images."""

    @abstractmethod
    def forward(self, x: Tensor) -> AnomalyOutput:
        """Score images ``x`` in [0,1], (B,3,H,W); differentiable w.r.t. ``x``."""

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """The frozen feature extractor's output, for surrogate heads: (B, C, h, w) or (B, C)."""


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a module, so it travels with the device."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
