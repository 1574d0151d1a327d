"""ZARND (Mirzaei et al., 2025, "Killing it with Zero-Shot: Adversarially Robust Novelty Detection").

Global-pooled penultimate features of an (ideally adversarially robust, ImageNet-trained)
ResNet; the normal train features are the memory bank; the image score is the sum of the
L2 distances to the k = 2 nearest bank rows. There is no localization: ``map`` is the
score broadcast over the image and the leaderboard shows pixel metrics as n/a.

Weights: ``random`` (labelled), ``timm`` (standard, non-robust ImageNet weights) or a local
checkpoint, including the robustness library's ``.ckpt`` layout (``module.model.*`` /
``module.attacker.*``), e.g. ``resnet18_linf_eps2.0.ckpt`` from
https://huggingface.co/madrylab/robust-imagenet-models — the weights the paper uses.

Paper vs code: the paper scores with Euclidean distances; the authors' code L2-normalises
the features first (``normalize_features: true`` reproduces that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import PositiveInt

from .backbones import backbone_problems, create_backbone
from .base import AnomalyOutput, Detector, Normalize, Precision
from .knn import MemoryBank
from .registry import register_detector


@register_detector("zarnd")
class ZARND(Detector):
    name = "zarnd"
    tiny = {"backbone": "resnet18", "input_size": 64}  # a seconds-on-CPU configuration: contract tests and check-detector
    version = "1"
    localization = False

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str = "random",
        input_size: PositiveInt = 224,
        k: PositiveInt = 2,
        normalize_features: bool = False,
        fit_batch_size: PositiveInt = 64,
        precision: Precision = "fp32",
    ):
        super().__init__()
        for problem in self.check_config(backbone=backbone, weights=weights, k=k, input_size=input_size):
            raise UserError(problem)
        self.input_size = input_size
        self.k = k
        self.normalize_features = normalize_features
        self.fit_batch_size, self.precision = fit_batch_size, precision
        self.normalize = Normalize()
        # num_classes=0: the classifier is replaced by identity, leaving the pooled features
        self.backbone, self.weights = create_backbone(backbone, weights, num_classes=0)
        self.backbone.requires_grad_(False)  # frozen: gradients flow to the input only
        self.memory_bank = MemoryBank()

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        problems = backbone_problems(kwargs)
        if kwargs.get("k", 2) < 1:
            problems.append(f"k must be at least 1, got {kwargs['k']}")
        if kwargs.get("input_size", 224) < 32:
            problems.append(f"input_size must be at least 32, got {kwargs['input_size']}")
        return problems


    def features(self, x: Tensor) -> Tensor:
        """Penultimate (global average pooled) features, (B, C)."""
        with self.autocast(x):
            f = self.backbone(self.normalize(x)).float()
        return F.normalize(f, dim=1) if self.normalize_features else f

    @torch.no_grad()
    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        device = next(self.backbone.parameters()).device
        chunks = [
            self.features(normal_images[start : start + self.fit_batch_size].to(device))
            for start in range(0, normal_images.shape[0], self.fit_batch_size)
        ]
        bank = torch.cat(chunks)
        if bank.shape[0] < self.k:
            raise UserError(f"zarnd needs at least k={self.k} normal train images, got {bank.shape[0]}", key="k")
        self.memory_bank.set(bank)

    def bank_rows(self, n_train: int) -> int:
        """Memory bank rows fitting on ``n_train`` images gives: one per image."""
        return n_train

    def forward(self, x: Tensor) -> AnomalyOutput:
        score = self.memory_bank.distances(self.features(x), k=self.k).sum(dim=1)  # (B,)
        maps = score[:, None, None].expand(-1, *x.shape[-2:])
        return AnomalyOutput(score=score, map=maps)
