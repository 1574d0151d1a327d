"""Any folder in MVTec AD layout (Bergmann et al., CVPR 2019).

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect|good>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

MPDD uses the same layout; the generated ``textures`` data is written in it too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..schema import PositiveInt
from .base import Dataset, Split, digest, register_dataset, to_tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NORMAL = "good"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_rgb(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except OSError as err:
        raise UserError(f"cannot read image {str(path)!r}: {err}") from err


def _read_mask(path: Path, size: int, image: Path) -> np.ndarray:
    """The mask of ``image``, binary, resized like it; a mask of another size is refused
    (stretching it would move the defect)."""
    try:
        with Image.open(path) as im, Image.open(image) as ref:
            if im.size != ref.size:
                raise UserError(f"mask {str(path)!r} is {im.size[0]}×{im.size[1]} but its image {str(image)!r} is "
                                f"{ref.size[0]}×{ref.size[1]}; masks must match their images")
            mask = np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) > 0  # 0/255 (MVTec) or 0/1 (VisA)
    except OSError as err:
        raise UserError(f"cannot read mask {str(path)!r}: {err}") from err
    if not mask.any():
        log.warning("mask %s of an anomalous image is empty at %d px: its pixels count as normal", path, size)
    return mask


def list_category(root: Path, category: str, normal: str = NORMAL) -> dict[str, list[Path]]:
    """Check the layout of one category and list its files; errors name the missing path."""
    if not root.is_dir():
        raise UserError(f"dataset root {str(root)!r} does not exist or is not a folder", key="root")
    folder = root / category
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise UserError(
            f"category folder {str(folder)!r} not found; categories under the root: {found}",
            key="categories",
        )
    train_dir, test_dir = folder / "train" / normal, folder / "test"
    for needed in (train_dir, test_dir):
        if not needed.is_dir():
            raise UserError(
                f"{str(needed)!r} is missing: expected MVTec layout <category>/train/{normal}, "
                f"<category>/test/<defect|{normal}>, <category>/ground_truth/<defect>/<stem>_mask.png"
            )
    train = _images_in(train_dir)
    if not train:
        raise UserError(f"no images in {str(train_dir)!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    test = [p for d in sorted(test_dir.iterdir()) if d.is_dir() for p in _images_in(d)]
    if not test:
        raise UserError(f"no test images under {str(test_dir)!r}")
    return {"train": train, "test": test}


def mask_path(root: Path, category: str, image: Path) -> Path:
    """``<stem>_mask.png`` (MVTec, MPDD) or ``<stem>.png`` (VisA and BTAD as converted by anomalib)."""
    folder = root / category / "ground_truth" / image.parent.name
    candidates = [folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_category(root: Path, category: str, image_size: int, normal: str = NORMAL) -> Split:
    files = list_category(root, category, normal)
    train = to_tensor(np.stack([_read_rgb(p, image_size) for p in files["train"]]))
    test = to_tensor(np.stack([_read_rgb(p, image_size) for p in files["test"]]))
    labels = np.array([int(p.parent.name != normal) for p in files["test"]])
    masks = np.zeros((len(files["test"]), image_size, image_size), dtype=np.float32)
    for i, path in enumerate(files["test"]):
        if labels[i]:
            mpath = mask_path(root, category, path)
            if not mpath.is_file():
                raise UserError(f"mask {str(mpath)!r} (or {mpath.parent.name}/{path.stem}.png) for anomalous image {str(path)!r} is missing")
            masks[i] = _read_mask(mpath, image_size, path)
    if labels.min() == labels.max():
        log.warning("%s/%s: the test set has %s images only; image AUROC, AP and F1 are undefined for it",
                    root, category, "anomalous" if labels[0] else "normal")
    names = [f"{p.parent.name}/{p.stem}" for p in files["test"]]
    return Split(train, test, labels, torch.from_numpy(masks), names)


def resolve_root(root: str | None, name: str) -> Path:
    """``root`` with ``~`` and ``$VAR``/``${VAR}`` expanded; without one, ``$ROBUSTAD_DATA/<name>``."""
    if root is None:
        base = os.environ.get("ROBUSTAD_DATA")
        if not base:
            raise UserError(f"give the dataset's root: PATH, or set ROBUSTAD_DATA (its folder {name}/ is then used)", key="root")
        return Path(base).expanduser() / name
    expanded = os.path.expandvars(root)
    if "$" in expanded:
        raise UserError(f"root {root!r} names an environment variable that is not set", key="root")
    return Path(expanded).expanduser()


def fingerprint_folder(root: Path, category: str, normal: str = NORMAL) -> str:
    """Relative paths and sizes of every file the category uses."""
    files = list_category(root, category, normal)
    entries = [(str(p.relative_to(root)), p.stat().st_size) for p in files["train"] + files["test"]]
    gt = root / category / "ground_truth"
    if gt.is_dir():
        entries += [(str(p.relative_to(root)), p.stat().st_size) for p in sorted(gt.rglob("*")) if p.is_file()]
    return digest(entries)[:16]


@register_dataset("mvtec")
class MVTec(Dataset):
    name = "mvtec"
    version = "1"
    has_masks = True

    def __init__(self, root: str | None = None, categories: list[str] | None = None, image_size: PositiveInt = 256,
                 normal_dir: str = NORMAL):
        self.root = resolve_root(root, self.name)
        self.normal_dir = normal_dir  # "good" (MVTec, VisA converted, MPDD) or "ok" (BTAD)
        self.image_size = image_size
        self._categories = categories

    @property
    def categories(self) -> list[str]:
        if self._categories:
            return list(self._categories)
        if not self.root.is_dir():
            raise UserError(f"dataset root {str(self.root)!r} does not exist", key="root")
        return sorted(p.name for p in self.root.iterdir() if (p / "train" / self.normal_dir).is_dir())

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        problems = []
        if kwargs.get("image_size", 256) < 8:
            problems.append(f"image_size must be at least 8, got {kwargs['image_size']}")
        try:
            resolve_root(kwargs.get("root"), "mvtec")
        except UserError as err:
            problems.append(str(err).removeprefix("root: "))
        outside = [c for c in kwargs.get("categories") or [] if Path(c).is_absolute() or ".." in Path(c).parts or "/" in c or "\\" in c]
        if outside:
            problems.append(f"categories are folder names under root, got {outside}")
        return problems

    def fingerprint(self, category: str, *, seed: int) -> str:
        return fingerprint_folder(self.root, category, self.normal_dir)

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        return read_category(self.root, category, self.image_size, self.normal_dir)
