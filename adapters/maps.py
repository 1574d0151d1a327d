"""Anomaly-map post-processing shared by the adapters: upsampling and Gaussian smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, H, W) maps, truncated at 4σ, reflect padding."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4 * sigma + 0.5))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)  # (B, 1, H, W)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def patch_map(patch_scores: Tensor, size: tuple[int, int], sigma: float, mode: str = "bilinear") -> Tensor:
    """(B, h, w) patch scores → (B, H, W): upsampling (bilinear, or nearest as anomalib), then a
    Gaussian blur (σ in pixels)."""
    corners = {"align_corners": False} if mode == "bilinear" else {}
    maps = F.interpolate(patch_scores.unsqueeze(1), size=size, mode=mode, **corners)
    return gaussian_blur(maps.squeeze(1), sigma)
