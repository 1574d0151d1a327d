"""PatchCore (Roth et al., CVPR 2022, "Towards Total Recall in Industrial Anomaly Detection").

Mid-level features of a timm backbone (default ``wide_resnet50_2`` layer2 + layer3, as in
anomalib), 3×3 local average pooling, layer3 upsampled to layer2's grid and concatenated;
a greedy k-center coreset of the normal patch features is the memory bank. The anomaly map
is the nearest-neighbour distance of each patch, upsampled to the input and Gaussian-blurred
(σ = 4); the image score is the maximum of the map.

Against anomalib's Patchcore on the same backbone weights and images, the features, the
3×3 pooling, the exact nearest-neighbour distances and the blur (σ = 4, 33 taps, reflect)
agree; three choices differ, each an option here: the image score (``score: map_max``, the
maximum of the smoothed map, vs ``reweighted``, the paper's and anomalib's k-NN re-weighted
largest patch distance with ``num_neighbors: 9``), the map upsampling (``upsampling:
bilinear`` vs anomalib's ``nearest``), and the coreset (ours greedy k-center on a seeded
Gaussian projection; anomalib's on a sparse random projection from another start): with
``score: reweighted, upsampling: nearest`` and no subsampling (``coreset_ratio: 1``) both
give the same scores and maps (``tests/unit/adapters/test_anomalib.py``).

Unlike anomalib's implementation (features under ``no_grad``), the forward pass is
differentiable: faiss finds neighbour indices, torch recomputes their distances.
Weights: ``random`` (random init, no download), ``timm`` (ImageNet weights from the hub)
or a checkpoint path.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import NonNegative, PositiveInt

from .backbones import backbone_problems, create_feature_backbone, layer_problem
from .base import AnomalyOutput, Detector, Normalize, Precision
from .knn import MemoryBank, greedy_coreset
from .maps import patch_map
from .registry import register_detector


@register_detector("patchcore")
class PatchCore(Detector):
    name = "patchcore"
    tiny = {"backbone": "resnet18", "input_size": 64}  # a seconds-on-CPU configuration: contract tests and check-detector
    version = "1"

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: list[str] | None = None,
        weights: str = "random",
        input_size: PositiveInt = 224,
        coreset_ratio: float = 0.1,
        blur_sigma: NonNegative = 4.0,
        fit_batch_size: PositiveInt = 32,
        precision: Precision = "fp32",
        score: Literal["map_max", "reweighted"] = "map_max",
        num_neighbors: PositiveInt = 9,
        upsampling: Literal["bilinear", "nearest"] = "bilinear",
    ):
        super().__init__()
        for problem in self.check_config(
            backbone=backbone, weights=weights, coreset_ratio=coreset_ratio, input_size=input_size
        ):
            raise UserError(problem)
        self.layers = list(layers or ["layer2", "layer3"])
        self.input_size = input_size
        self.coreset_ratio = coreset_ratio
        self.blur_sigma = blur_sigma
        self.fit_batch_size, self.precision = fit_batch_size, precision
        self.score, self.num_neighbors, self.upsampling = score, num_neighbors, upsampling
        self.normalize = Normalize()
        self.backbone, self.weights = create_feature_backbone(backbone, self.layers, weights)
        self.backbone.requires_grad_(False)  # frozen: gradients flow to the input only
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.memory_bank = MemoryBank()

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        """Cheap checks run by ``robustad-bench validate`` (no model is built)."""
        problems = backbone_problems(kwargs)
        if not problems and (problem := layer_problem(kwargs.get("backbone", "wide_resnet50_2"), kwargs.get("layers") or ["layer2", "layer3"])):
            problems.append(problem)
        ratio = kwargs.get("coreset_ratio", 0.1)
        if not 0 < ratio <= 1:
            problems.append(f"coreset_ratio must be in (0, 1], got {ratio}")
        if kwargs.get("input_size", 224) < 16:
            problems.append(f"input_size must be at least 16, got {kwargs['input_size']}")
        return problems


    def features(self, x: Tensor) -> Tensor:
        """Locally aware patch features (B, C, h, w) on the first layer's grid."""
        with self.autocast(x):
            feats = [f.float() for f in self.backbone(self.normalize(x))]
        size = feats[0].shape[-2:]
        pooled = [self.pool(f) for f in feats]
        pooled = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled]
        return torch.cat(pooled, dim=1)

    @torch.no_grad()
    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        # Fitting builds the bank; it is not on the gradient path attacks differentiate.
        device = next(self.backbone.parameters()).device
        chunks = []
        for start in range(0, normal_images.shape[0], self.fit_batch_size):
            batch = normal_images[start : start + self.fit_batch_size].to(device)
            f = self.features(batch)  # (B, C, h, w)
            chunks.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        patches = torch.cat(chunks)  # (N*h*w, C)
        n_keep = max(1, math.ceil(self.coreset_ratio * patches.shape[0]))
        keep = greedy_coreset(patches, n_keep, seed=seed)
        self.memory_bank.set(patches[keep])

    def bank_rows(self, n_train: int) -> int:
        """Memory bank rows fitting on ``n_train`` images gives (the coreset of their patches)."""
        device = next(self.backbone.parameters()).device
        with torch.no_grad():
            h, w = self.features(torch.zeros(1, 3, self.input_size, self.input_size, device=device)).shape[-2:]
        return max(1, math.ceil(self.coreset_ratio * n_train * h * w))

    def forward(self, x: Tensor) -> AnomalyOutput:
        f = self.features(x)  # (B, C, h, w)
        b, c, h, w = f.shape
        queries = f.permute(0, 2, 3, 1).reshape(-1, c)  # (B*h*w, C)
        dist = self.memory_bank.distances(queries, k=1)[:, 0].view(b, h, w)
        maps = patch_map(dist, x.shape[-2:], self.blur_sigma, mode=self.upsampling)  # (B, H, W)
        if self.score == "map_max":
            return AnomalyOutput(score=maps.flatten(1).amax(dim=1), map=maps)
        return AnomalyOutput(score=self.reweighted_score(queries.view(b, h * w, c), dist.view(b, h * w)), map=maps)

    def reweighted_score(self, patches: Tensor, dist: Tensor) -> Tensor:
        """The paper's image score (Roth et al., eq. 7; anomalib's): the largest patch distance
        s*, times 1 − softmax over the distances from that patch to its nearest bank row m* and
        m*'s ``num_neighbors`` − 1 nearest bank rows, taken at m*. Per image; neighbours are
        found without gradient, distances recomputed by torch."""
        worst = dist.argmax(dim=1)  # (B,) the patch of largest distance
        rows = torch.arange(patches.shape[0], device=patches.device)
        query, s_star = patches[rows, worst], dist[rows, worst]  # (B, C), (B,)
        bank = self.memory_bank.bank
        m_star = self.memory_bank.nearest(query, k=1)[:, 0]  # (B,)
        support = self.memory_bank.nearest(bank[m_star], k=min(self.num_neighbors, bank.shape[0]))  # (B, k), m* first
        distances = (query.float().unsqueeze(1) - bank[support]).pow(2).sum(-1).clamp_min(1e-12).sqrt()  # (B, k)
        return (1 - torch.softmax(distances, dim=1)[:, 0]) * s_star
