"""A generated dataset: horizontal stripes; anomalies are a square of another colour.

Deterministic from the seed, exact masks, nothing to download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustad_bench.harness.datasets import Dataset, Split
from robustad_bench.harness.datasets.base import digest


class Stripes(Dataset):
    name = "stripes"
    version = "1"
    has_masks = True

    def __init__(self, categories: list[str] | None = None, image_size: int = 32, n_train: int = 8, n_test: int = 8):
        self.categories = list(categories or ["red", "green"])
        self.image_size, self.n_train, self.n_test = image_size, n_train, n_test

    def fingerprint(self, category: str, *, seed: int) -> str:
        return digest({"stripes": self.version, "category": category, "seed": seed, "size": self.image_size,
                       "n_train": self.n_train, "n_test": self.n_test})[:16]

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        rng = np.random.default_rng([seed, len(category)])
        size, channel = self.image_size, 0 if category == "red" else 1

        def image(anomalous: bool):
            x = np.zeros((3, size, size), np.float32)
            x[channel, ::4] = 0.8
            x += rng.uniform(0, 0.1, x.shape).astype(np.float32)
            mask = np.zeros((size, size), np.float32)
            if anomalous:
                r, c = rng.integers(0, size - 8, 2)
                x[2, r:r + 8, c:c + 8], mask[r:r + 8, c:c + 8] = 0.9, 1.0
            return x.clip(0, 1), mask

        train = torch.from_numpy(np.stack([image(False)[0] for _ in range(self.n_train)]))
        test = [image(i % 2 == 1) for i in range(self.n_test)]
        labels = np.array([i % 2 for i in range(self.n_test)])
        names = [f"{'square' if y else 'good'}/{i:03d}" for i, y in enumerate(labels)]
        return Split(train, torch.from_numpy(np.stack([t[0] for t in test])), labels,
                     torch.from_numpy(np.stack([t[1] for t in test])), names)
