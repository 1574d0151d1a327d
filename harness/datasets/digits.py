"""scikit-learn's 8×8 handwritten digits as one-class novelty detection (ZARND's low-res setting).

Normal = one digit (the category, "0" … "9"); the test set holds unseen images of that
digit and of the other digits (anomalous). Images are upsampled bilinearly and replicated
to three channels. Image-level detection only: there are no pixel masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustad_bench.core.schema import PositiveInt

from .base import Counts, Dataset, Split, check_categories, digest, register_dataset

CATEGORIES = [str(d) for d in range(10)]
GENERATOR_VERSION = "1"


@register_dataset("digits")
class Digits(Dataset):
    name = "digits"
    version = GENERATOR_VERSION
    has_masks = False

    def __init__(
        self,
        categories: list[str] | None = None,
        image_size: PositiveInt = 64,
        n_train: PositiveInt = 100,
        n_test_normal: PositiveInt = 50,
        n_test_anomalous: PositiveInt = 50,
    ):
        self.categories = [str(c) for c in (categories or CATEGORIES)]
        self.image_size = image_size
        self.n_train = n_train
        self.n_test_normal = n_test_normal
        self.n_test_anomalous = n_test_anomalous

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        cats = kwargs.get("categories")
        problems = check_categories([str(c) for c in cats] if cats else None, CATEGORIES)
        if kwargs.get("n_train", 100) + kwargs.get("n_test_normal", 50) > 170:
            problems.append("n_train + n_test_normal must be at most 170 (images per digit)")
        return problems

    def counts(self, category: str) -> Counts:
        return Counts(self.n_train, self.n_test_normal, self.n_test_anomalous)

    def fingerprint(self, category: str, *, seed: int) -> str:
        return digest({
            "dataset": "digits", "generator": GENERATOR_VERSION, "category": category, "seed": seed,
            "image_size": self.image_size, "n_train": self.n_train,
            "n_test_normal": self.n_test_normal, "n_test_anomalous": self.n_test_anomalous,
        })[:16]

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        from sklearn.datasets import load_digits  # imported on use: sklearn costs seconds

        digits = load_digits()
        rng = np.random.default_rng([seed, int(category)])
        normal = rng.permutation(np.flatnonzero(digits.target == int(category)))
        other = rng.permutation(np.flatnonzero(digits.target != int(category)))
        train_idx = normal[: self.n_train]
        test_normal = normal[self.n_train : self.n_train + self.n_test_normal]
        test_anomalous = other[: self.n_test_anomalous]
        test_idx = np.concatenate([test_normal, test_anomalous])
        labels = np.r_[np.zeros(len(test_normal), int), np.ones(len(test_anomalous), int)]

        def images(idx: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(digits.images[idx]).float().div(16.0)[:, None]  # (N, 1, 8, 8)
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            return x.clamp(0, 1).repeat(1, 3, 1, 1)

        names = [f"{'good' if y == 0 else digits.target[i]}/{i:04d}" for i, y in zip(test_idx, labels)]
        return Split(images(train_idx), images(test_idx), labels, None, names)
