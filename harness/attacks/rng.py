"""Per-image random streams: an image's random draws depend on that image alone.

Each image of a cell draws from its own generator, seeded by (cell seed, image id); the id
is the image's name in its dataset (e.g. ``scratch/003``), not its position in a batch, so
random starts, noise and Square's windows are the same whatever ``batch_size``, batch
order or test-set order (DESIGN §2, batch invariance). Generators live on the images' device, so large draws need
no host-to-device copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor


def image_seed(seed: int, image: str | int) -> int:
    """A stable 62-bit seed for (cell seed, image id); the same on every run and platform."""
    return int(hashlib.sha256(f"{seed}/{image}".encode()).hexdigest()[:15], 16)


class ImageRandom:
    """One generator per image; each method returns a (B, *shape) stack of per-image draws."""

    def __init__(self, seed: int, images: Sequence[str | int], device: torch.device | str):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(image_seed(seed, i)) for i in images]

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, keep: Sequence[int]) -> ImageRandom:
        """The streams of the images at positions ``keep`` (they continue where they were)."""
        out = ImageRandom.__new__(ImageRandom)
        out.device, out.generators = self.device, [self.generators[int(k)] for k in keep]
        return out

    def rand(self, shape: Sequence[int]) -> Tensor:
        return torch.stack([torch.rand(tuple(shape), generator=g, device=self.device) for g in self.generators])

    def randn(self, shape: Sequence[int]) -> Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device) for g in self.generators])

    def randint(self, high: int | Tensor, shape: Sequence[int] = ()) -> Tensor:
        """Integers in [0, high) per image (``high`` may differ per image: a (B,) tensor)."""
        highs = high.tolist() if isinstance(high, Tensor) else [high] * len(self.generators)
        return torch.stack([torch.randint(int(h), tuple(shape), generator=g, device=self.device)
                            for g, h in zip(self.generators, highs)])

    def sign(self, shape: Sequence[int]) -> Tensor:
        """±1 with equal probability."""
        return self.randint(2, shape).float() * 2 - 1
