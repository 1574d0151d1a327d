"""A 20-line detector: distance of each pixel's colour to the normal images' mean colour.

It follows the contract every attack relies on: images in [0, 1], a differentiable
``forward`` (no ``no_grad``, no numpy), fitted state in a buffer so ``state_dict`` round-trips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustad_bench.adapters import AnomalyOutput, Detector


class MeanColour(Detector):
    name = "meancolour"
    version = "1"
    localization = True
    weights = "none (fitted mean colour)"
    tiny = {"input_size": 32}

    def __init__(self, input_size: int = 32, blur: int = 3):
        super().__init__()
        self.input_size, self.blur = input_size, blur
        self.register_buffer("mean", torch.zeros(1, 3, input_size, input_size))

    def fit(self, normal_images: torch.Tensor, *, seed: int) -> None:
        self.mean.copy_(normal_images.mean(0, keepdim=True))

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        distance = (x - self.mean).pow(2).sum(1, keepdim=True)
        anomaly_map = F.avg_pool2d(distance, self.blur, stride=1, padding=self.blur // 2)[:, 0]
        return AnomalyOutput(anomaly_map.flatten(1).amax(1), anomaly_map)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x
