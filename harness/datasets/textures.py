"""Embedded textures: scikit-image's real brick, grass and gravel photos with synthetic defects.

The DTD-Synthetic idea (Aota et al., WACV 2023) on images that ship with a dependency:
normal crops for training come from the top of each 512×512 photo, test crops from the
bottom, and anomalous test crops get one visible synthetic defect with an exact pixel mask:

- ``scratch``   a thick bright or dark polyline,
- ``hole``      a dark filled ellipse with a soft rim,
- ``stain``     a coloured, irregular blob that tints the texture,
- ``cut_paste`` a rotated rectangle cut from another texture.

Generation is deterministic from the seed and written in MVTec layout under the cache
(``<cache>/data/textures/<fingerprint>/``), then read back with the MVTec reader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from robustad_bench.core.files import shareable, temp_name
from robustad_bench.core.schema import PositiveInt

from .base import Counts, Dataset, Split, check_categories, digest, register_dataset
from .mvtec import MVTec

CATEGORIES = ["brick", "grass", "gravel"]
DEFECTS = ["scratch", "hole", "stain", "cut_paste"]
GENERATOR_VERSION = "1"
SPLIT_ROW = 288  # train crops above this row of the 512×512 photo, test crops below


def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata  # scikit-image is imported only when generating

    return getattr(skdata, name)().astype(np.float32) / 255.0  # (512, 512) grayscale


def _crop(photo: np.ndarray, rng: np.random.Generator, rows: tuple[int, int], crop: int, size: int) -> np.ndarray:
    from skimage.transform import resize

    top = int(rng.integers(rows[0], rows[1] - crop + 1))
    left = int(rng.integers(0, photo.shape[1] - crop + 1))
    patch = resize(photo[top : top + crop, left : left + crop], (size, size), anti_aliasing=True)
    return np.repeat(patch[..., None], 3, axis=2)  # (size, size, 3)


def _scratch(img, rng, other):
    from skimage import draw

    size = img.shape[0]
    mask = np.zeros((size, size), bool)
    points = rng.uniform(0.15, 0.85, size=(int(rng.integers(2, 4)) + 1, 2)) * size
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        rr, cc = draw.line(int(r0), int(c0), int(r1), int(c1))
        mask[rr, cc] = True
    width = max(1, round(size * rng.uniform(0.015, 0.03)))
    mask = ndimage.binary_dilation(mask, iterations=width)
    value = 1.0 if rng.random() < 0.5 else 0.0
    img[mask] = 0.15 * img[mask] + 0.85 * value
    return mask


def _ellipse(size, rng, lo, hi):
    from skimage import draw

    mask = np.zeros((size, size), bool)
    center = rng.uniform(0.25, 0.75, size=2) * size
    radii = rng.uniform(lo, hi, size=2) * size
    rr, cc = draw.ellipse(center[0], center[1], radii[0], radii[1], shape=mask.shape, rotation=rng.uniform(0, np.pi))
    mask[rr, cc] = True
    return mask


def _hole(img, rng, other):
    mask = _ellipse(img.shape[0], rng, 0.06, 0.14)
    depth = ndimage.distance_transform_edt(mask)
    shade = np.clip(depth / max(depth.max(), 1) * 2, 0, 1)[..., None]  # soft rim, dark centre
    img[:] = np.where(mask[..., None], img * (1 - 0.9 * shade) * 0.6, img)
    return mask


def _stain(img, rng, other):
    size = img.shape[0]
    mask = _ellipse(size, rng, 0.06, 0.14) | _ellipse(size, rng, 0.04, 0.1)
    mask = ndimage.binary_opening(mask, iterations=1) | mask
    tint = np.array([1.0, 1.0, 1.0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 0.7) * np.eye(3)[rng.integers(3)]
    img[mask] = np.clip(img[mask] * tint, 0, 1)
    return mask


def _cut_paste(img, rng, other):
    from skimage import draw

    size = img.shape[0]
    h, w = rng.uniform(0.12, 0.3, size=2) * size
    center = rng.uniform(0.3, 0.7, size=2) * size
    theta = rng.uniform(-np.pi / 4, np.pi / 4)
    corners = np.array([[-h, -w], [-h, w], [h, w], [h, -w]]) / 2
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    corners = corners @ rot.T + center
    mask = np.zeros((size, size), bool)
    rr, cc = draw.polygon(corners[:, 0], corners[:, 1], shape=mask.shape)
    mask[rr, cc] = True
    img[mask] = other[mask]
    return mask


DEFECT_FUNCS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "cut_paste": _cut_paste}


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)


def generate_category(out: Path, category: str, *, seed: int, image_size: int, crop_size: int,
                      n_train: int, n_test_normal: int, n_test_anomalous: int) -> None:
    """Write one category in MVTec layout under ``out/<category>``."""
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    photo = _photo(category)
    others = [_photo(c) for c in CATEGORIES if c != category]
    train_rows, test_rows = (0, SPLIT_ROW), (SPLIT_ROW, photo.shape[0])
    root = out / category
    for i in range(n_train):
        _save_png(root / "train" / "good" / f"{i:03d}.png", _crop(photo, rng, train_rows, crop_size, image_size))
    for i in range(n_test_normal):
        _save_png(root / "test" / "good" / f"{i:03d}.png", _crop(photo, rng, test_rows, crop_size, image_size))
    for i in range(n_test_anomalous):
        defect = DEFECTS[i % len(DEFECTS)]
        img = _crop(photo, rng, test_rows, crop_size, image_size)
        other = _crop(others[int(rng.integers(len(others)))], rng, (0, photo.shape[0]), crop_size, image_size)
        mask = DEFECT_FUNCS[defect](img, rng, other)
        _save_png(root / "test" / defect / f"{i:03d}.png", img)
        _save_png(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.float32))


@register_dataset("textures")
class Textures(Dataset):
    name = "textures"
    version = GENERATOR_VERSION
    has_masks = True

    def __init__(
        self,
        categories: list[str] | None = None,
        image_size: PositiveInt = 128,
        crop_size: PositiveInt = 160,
        n_train: PositiveInt = 40,
        n_test_normal: PositiveInt = 20,
        n_test_anomalous: PositiveInt = 20,
    ):
        self.categories = list(categories or CATEGORIES)
        self.image_size = image_size
        self.crop_size = crop_size
        self.n_train = n_train
        self.n_test_normal = n_test_normal
        self.n_test_anomalous = n_test_anomalous

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        problems = check_categories(kwargs.get("categories"), CATEGORIES)
        crop = kwargs.get("crop_size", 160)
        if not 16 <= crop <= 512 - SPLIT_ROW:
            problems.append(f"crop_size must be in [16, {512 - SPLIT_ROW}], got {crop}")
        return problems  # sizes and counts: their PositiveInt annotations, checked by the schema

    def _params(self, seed: int) -> dict:
        return {
            "generator": GENERATOR_VERSION, "seed": seed, "image_size": self.image_size,
            "crop_size": self.crop_size, "n_train": self.n_train,
            "n_test_normal": self.n_test_normal, "n_test_anomalous": self.n_test_anomalous,
        }

    def counts(self, category: str) -> Counts:
        return Counts(self.n_train, self.n_test_normal, self.n_test_anomalous)

    def fingerprint(self, category: str, *, seed: int) -> str:
        return digest({"dataset": "textures", "category": category, **self._params(seed)})[:16]

    def prepare(self, category: str, *, seed: int, data_dir: Path) -> Path:
        """Generate (once) and return the MVTec-layout root holding ``category``."""
        root = data_dir / "textures" / self.fingerprint(category, seed=seed)
        if (root / category / "train").is_dir():
            return root
        data_dir.mkdir(parents=True, exist_ok=True)
        prefix, suffix = temp_name(f"textures-{category}")
        tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=prefix, suffix=suffix))
        shareable(tmp, 0o777)
        try:
            generate_category(tmp, category, seed=seed, **{k: v for k, v in self._params(seed).items() if k not in ("generator", "seed")})
            (tmp / "generator.json").write_text(json.dumps({"category": category, **self._params(seed)}, indent=1))
            root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, root)  # atomic: a killed run never leaves a half-written category
        except OSError:
            if not (root / category / "train").is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return root

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        root = self.prepare(category, seed=seed, data_dir=data_dir)
        return MVTec(root, [category], self.image_size).load(category, seed=seed, data_dir=data_dir)
