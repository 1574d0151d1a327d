"""PatchGuard's foreground-aware pseudo-anomalies (seed 002, §5.1 and App. B), in torch.

1. Saliency ``G(x)``: Grad-CAM of a ResNet-18 on ``x`` and on ``k_soft`` = 3 soft
   augmentations of it (colour jitter, tint, grayscale, mild noise), multiplied element-wise
   so that only regions salient under every style survive (the foreground).
2. An anchor is drawn with probability proportional to ``G(x)`` (``saliency: uniform``
   draws it anywhere); a rectangle with w, h ~ U(0.05, 0.3)·size centred on it, rotated
   by θ ~ U(-45°, 45°), is the exact anomaly mask.
3. Each image draws ``k_hard`` of the hard transformations (elastic warp, large rotation,
   heavy noise, strong colour change, content shifted from elsewhere); they are applied in
   sequence and kept only inside the mask (Eq. 1).

Everything is batched and driven by one ``torch.Generator``, so a seed fixes the anomalies.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Normalize
from .maps import gaussian_blur

Transform = Callable[[Tensor, torch.Generator], Tensor]


def upload(t: Tensor, device: torch.device | str) -> Tensor:
    """A CPU-drawn tensor on ``device`` without stalling the host: on CUDA a page-locked copy
    sent asynchronously (a copy from pageable memory waits for the device's queue to drain,
    a host sync in every training step). The values are the same either way."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> Tensor:
    return upload(low + (high - low) * torch.rand(n, generator=g), device)


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


# -- soft augmentations: style changes that keep the content ---------------------------------

def soft_jitter(x: Tensor, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    brightness = _uniform(n, 0.8, 1.2, g, x.device).view(n, 1, 1, 1)
    contrast = _uniform(n, 0.8, 1.2, g, x.device).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * brightness - mean) * contrast + mean).clamp(0, 1)


def soft_tint(x: Tensor, g: torch.Generator) -> Tensor:
    tint = _uniform(x.shape[0] * 3, -0.1, 0.1, g, x.device).view(-1, 3, 1, 1)
    return (x + tint).clamp(0, 1)


def soft_grayscale(x: Tensor, g: torch.Generator) -> Tensor:
    return _gray(x)


def soft_noise(x: Tensor, g: torch.Generator) -> Tensor:
    return (x + 0.03 * upload(torch.randn(x.shape, generator=g), x.device)).clamp(0, 1)


SOFT: tuple[Transform, ...] = (soft_jitter, soft_tint, soft_grayscale, soft_noise)


# -- hard augmentations: changes that break the content ------------------------------------

def _warp(x: Tensor, flow: Tensor) -> Tensor:
    """Sample ``x`` at the identity grid plus ``flow`` (B, H, W, 2) in normalised units."""
    n = x.shape[0]
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(eye, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid + flow, mode="bilinear", padding_mode="reflection", align_corners=False)


def hard_elastic(x: Tensor, g: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    noise = upload(torch.rand(n * 2, h, w, generator=g), x.device) * 2 - 1
    flow = gaussian_blur(noise, sigma=max(1.0, h / 32)).view(n, 2, h, w).permute(0, 2, 3, 1)
    flow = flow / flow.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * 0.15
    return _warp(x, flow)


def hard_rotation(x: Tensor, g: torch.Generator) -> Tensor:
    angle = _uniform(x.shape[0], 90, 270, g, x.device) * math.pi / 180
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def hard_noise(x: Tensor, g: torch.Generator) -> Tensor:
    return (x + 0.3 * upload(torch.randn(x.shape, generator=g), x.device)).clamp(0, 1)


def hard_colour(x: Tensor, g: torch.Generator) -> Tensor:
    n = x.shape[0]
    perm = upload(torch.stack([torch.randperm(3, generator=g) for _ in range(n)]), x.device)
    shuffled = x.gather(1, perm.view(n, 3, 1, 1).expand_as(x))
    gain = _uniform(n, 0.3, 1.7, g, x.device).view(n, 1, 1, 1)
    invert = upload(torch.rand(n, generator=g) < 0.5, x.device).view(n, 1, 1, 1)
    out = (shuffled * gain).clamp(0, 1)
    return torch.where(invert, 1 - out, out)


def hard_shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Content from another place in the image (cut-paste within the image)."""
    h, w = x.shape[-2:]
    dy = int(torch.randint(h // 4, 3 * h // 4 + 1, (1,), generator=g))
    dx = int(torch.randint(w // 4, 3 * w // 4 + 1, (1,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


HARD: tuple[Transform, ...] = (hard_elastic, hard_rotation, hard_noise, hard_colour, hard_shift)


# -- saliency and masks --------------------------------------------------------------------

def grad_cam(classifier: nn.Module, normalize: Normalize, x: Tensor) -> Tensor:
    """Grad-CAM (B, H, W) in [0, 1] for the predicted class of a timm CNN classifier."""
    with torch.enable_grad():
        acts = classifier.forward_features(normalize(x)).detach().requires_grad_(True)  # (B, C, h, w)
        logits = classifier.forward_head(acts)
        top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        (grads,) = torch.autograd.grad(top, acts)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    lo = cam.flatten(1).amin(1).view(-1, 1, 1)
    hi = cam.flatten(1).amax(1).view(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-8)).detach()


def foreground_saliency(classifier: nn.Module, normalize: Normalize, x: Tensor, g: torch.Generator, k_soft: int = 3) -> Tensor:
    """``G(x)``: the product of Grad-CAMs of ``x`` and ``k_soft`` soft augmentations of it."""
    saliency = grad_cam(classifier, normalize, x)
    for i in torch.randperm(len(SOFT), generator=g)[:k_soft].tolist():
        saliency = saliency * grad_cam(classifier, normalize, SOFT[i](x, g))
    return saliency


def rotated_rectangles(saliency: Tensor, g: torch.Generator, device: torch.device | None = None) -> Tensor:
    """Binary masks (B, H, W) on ``device`` (default: the saliency's): one rotated rectangle per
    image, centred on an anchor drawn with probability proportional to ``saliency`` (B, H, W),
    drawn on the CPU (a saliency kept there costs no device round trip)."""
    n, h, w = saliency.shape
    weights = saliency.flatten(1).float().cpu() + 1e-12
    anchor = torch.multinomial(weights, 1, generator=g).squeeze(1)
    cy, cx = (anchor // w).float(), (anchor % w).float()
    half_w = torch.empty(n).uniform_(0.05 * w, 0.3 * w, generator=g) / 2
    half_h = torch.empty(n).uniform_(0.05 * h, 0.3 * h, generator=g) / 2
    theta = torch.empty(n).uniform_(-math.pi / 4, math.pi / 4, generator=g)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    dy, dx = ys[None] - cy.view(n, 1, 1), xs[None] - cx.view(n, 1, 1)
    cos, sin = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # coordinates in the rectangle's frame
    inside = (u.abs() <= half_w.view(n, 1, 1)) & (v.abs() <= half_h.view(n, 1, 1))
    return upload(inside.float(), device or saliency.device)


def pseudo_anomalies(x: Tensor, saliency: Tensor, g: torch.Generator, k_hard: int = 2) -> tuple[Tensor, Tensor]:
    """Anomalous images and their exact pixel masks (B, H, W) from normal images ``x``
    (``saliency`` on any device: the CPU keeps the training loop free of host syncs)."""
    masks = rotated_rectangles(saliency, g, x.device)
    # each image draws its own k_hard of the hard transforms (applied in HARD's order)
    chosen = torch.rand(x.shape[0], len(HARD), generator=g).argsort(dim=1)[:, :k_hard]
    picked = upload(torch.zeros(x.shape[0], len(HARD), dtype=torch.bool).scatter_(1, chosen, True), x.device)
    distorted = x
    for i, transform in enumerate(HARD):
        distorted = torch.where(picked[:, i].view(-1, 1, 1, 1), transform(distorted, g), distorted)
    m = masks.unsqueeze(1)
    return distorted * m + x * (1 - m), masks
