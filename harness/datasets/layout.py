"""Datasets read from a user's folder in their published layout: the shared machinery.

A loader only lists one category (``index``): its normal train images and its labelled
test images, each with its mask files. Reading, resizing, fingerprints, the layout check
``robustad-bench data check`` prints, and the download instructions are shared here.

Masks are binarised with ``> 0`` (MVTec's 0/255, VisA's 0/1 and LOCO's per-defect values
all count), merged with "any" when a defect has several layers, resized by the any-pixel
rule (a pixel is anomalous when any file pixel it covers is), and must have their image's
size: a stretched mask would move the defect. Images are scaled by their format's range
(8-bit by 255, 16-bit by 65535).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from PIL import Image

from robustad_bench.core.errors import UserError
from robustad_bench.core.paths import resolve_root
from robustad_bench.core.schema import AtLeast

from .base import Counts, Dataset, Split, digest, resize_mask, to_tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_LISTED = 5  # problems of one kind named in a message before "... and N more"


@dataclass(frozen=True)
class Sample:
    image: Path
    label: int  # 1 = anomalous
    name: str  # the id in rows and scores.npz, e.g. "scratch/003"
    masks: tuple[Path, ...] = ()  # merged with "any"; empty for normal images and AD-only sets


@dataclass
class Listing:
    train: list[Path]
    test: list[Sample]
    problems: list[str] = field(default_factory=list)  # pairing problems (an unpaired mask or image)

    def counts(self) -> Counts:
        anomalous = sum(s.label for s in self.test)
        return Counts(len(self.train), len(self.test) - anomalous, anomalous)

    def files(self) -> list[Path]:
        return self.train + [p for s in self.test for p in (s.image, *s.masks)]


@dataclass(frozen=True)
class Download:
    """Where a user gets the data. With ``archives`` (a direct download), ``data download``
    fetches, verifies and unpacks them into the root, dropping the leading folder ``strip``;
    without (a login, a licence click or no direct link), it prints these steps."""

    page: str
    licence: str
    archives: tuple[tuple[str, str], ...] = ()  # (url, "sha256:…" | "md5:…" | "") per archive
    extract: str = ""
    note: str = ""
    strip: str = ""  # the archive's leading folder above the dataset's root layout

    @property
    def direct(self) -> bool:
        return bool(self.archives)

    def instructions(self, name: str) -> str:
        lines = [f"{name}: download page {self.page}", f"  licence: {self.licence}"]
        for url, checksum in self.archives:
            kind, _, value = checksum.partition(":")
            lines.append(f"  archive: {url}")
            lines.append(f"    {kind} {value}" if value else "    no checksum is published for this archive")
        if self.extract:
            lines.append(f"  extract: {self.extract}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


@dataclass
class CheckRow:
    """One category's line in the ``data check`` table."""

    category: str
    found: Counts | None = None
    published: Counts | None = None
    problems: list[str] = field(default_factory=list)  # layout, pairing, size: exit 2
    warnings: list[str] = field(default_factory=list)  # counts that differ from the published ones

    @property
    def status(self) -> str:
        if self.problems:
            return "ERROR"
        return "warning" if self.warnings else "ok"


def images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def need_folder(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is missing: expected {expected}")


def listed(items: list, what: str) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {what}: {shown}{more}"


IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on a bad file
WIDE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}  # 16-bit modes: their range


def decode(path: Path) -> Image.Image:
    """The image's pixels, decoded (a truncated, empty or non-image file fails here, a
    decompression bomb by its header before any pixel is read); ``UserError`` naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode in WIDE or im.mode == "F" else im.convert("RGB") if im.mode != "L" else im.copy()
    except IMAGE_ERRORS as err:
        raise UserError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}") from err


def as_unit_float(im: Image.Image) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1], scaled by the format's range: 255 for 8-bit
    images, 65535 for 16-bit ones (medical sets ship 16-bit PNG and TIFF), none for float."""
    array = np.asarray(im)
    if im.mode in WIDE:
        return (array.astype(np.float64) / WIDE[im.mode]).clip(0, 1).astype(np.float32)
    if im.mode == "F":
        return array.astype(np.float32).clip(0, 1)
    return array.astype(np.float32) / 255


def read_rgb(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: 8-bit images resized bilinearly as they are; 16-bit and float
    ones scaled to [0, 1] by their range first, then resized and quantised."""
    im = decode(path)
    if im.mode in ("RGB", "L"):
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    gray = Image.fromarray(as_unit_float(im), mode="F").resize((size, size), Image.BILINEAR)
    value = (np.asarray(gray).clip(0, 1) * 255).round().astype(np.uint8)
    return np.repeat(value[..., None], 3, axis=2)


def image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except IMAGE_ERRORS as err:
        raise UserError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err


def read_mask(sample: Sample, size: int) -> np.ndarray:
    """The sample's mask layers, each binarised with > 0 at the file's resolution, merged with
    "any", then resized by the any-pixel rule (``resize_mask``): a one-pixel scratch survives."""
    reference = image_size_of(sample.image)
    merged = np.zeros(reference[::-1], dtype=bool)
    for path in sample.masks:
        im = decode(path)
        if im.size != reference:
            raise UserError(f"mask {str(path)!r} is {im.size[0]}×{im.size[1]} but its image {str(sample.image)!r} is "
                            f"{reference[0]}×{reference[1]}; masks must match their images")
        array = np.asarray(im)
        merged |= (array.max(axis=2) if array.ndim == 3 else array) > 0
    resized = resize_mask(torch.from_numpy(merged)[None], size)[0].numpy() > 0
    if sample.masks and not resized.any():
        log.warning("%s of an anomalous image is empty (%s): its pixels count as normal",
                    ", ".join(str(p) for p in sample.masks), sample.image)
    return resized


def decode_problems(listing: Listing) -> list[str]:
    """Every file of the listing that does not decode (header and pixels), named."""
    problems = []
    for path in listing.files():
        try:
            decode(path)
        except UserError as err:
            problems.append(str(err))
    return problems


def size_problems(listing: Listing) -> list[str]:
    """Every mask whose size differs from its image's (headers only: cheap on a whole benchmark)."""
    problems = []
    for sample in listing.test:
        if not sample.masks:
            continue
        reference = image_size_of(sample.image)
        for path in sample.masks:
            if (size := image_size_of(path)) != reference:
                problems.append(f"mask {str(path)!r} is {size[0]}×{size[1]} but its image is {reference[0]}×{reference[1]}")
    return problems


def safe_category(category: str) -> bool:
    return not (Path(category).is_absolute() or ".." in Path(category).parts or "/" in category or "\\" in category)


class FolderDataset(Dataset):
    """A dataset in its published layout under ``root``; subclasses list a category."""

    published: dict[str, Counts | None] = {}  # category → published (train, test normal, test anomalous)
    download: Download | None = None
    layout: str = ""  # one line: what a category folder holds
    open_categories: bool = False  # True: any folder under root is a category (the generic MVTec layout)

    def __init__(self, root: str | None = None, categories: list[str] | None = None, image_size: Annotated[int, AtLeast(8)] = 256):
        self.root = root if isinstance(root, Path) else resolve_root(root, self.name)  # a Path: used as is
        self.image_size = image_size
        self._categories = [str(c) for c in categories] if categories else None

    @property
    def categories(self) -> list[str]:
        return list(self._categories or self.published)

    def expected(self, category: str) -> Counts | None:
        """The published counts of a category, as this configuration splits it."""
        return self.published.get(category)

    def reachable(self) -> bool:
        return self.root.is_dir()

    def counts(self, category: str) -> Counts | None:
        """What the user's folder holds when it is there, else the published counts."""
        return self.listing(category).counts() if self.reachable() else self.expected(category)

    @abstractmethod
    def index(self, category: str) -> Listing:
        """List one category's files; a missing folder raises ``UserError`` naming it."""

    @classmethod
    def check_config(cls, **kwargs) -> list[str]:
        problems = []
        try:
            resolve_root(kwargs.get("root"), cls.name)
        except UserError as err:
            problems.append(str(err).removeprefix("root: "))
        categories = [str(c) for c in kwargs.get("categories") or []]
        if outside := [c for c in categories if not safe_category(c)]:
            problems.append(f"categories are folder names under root, got {outside}")
        elif cls.published and not cls.open_categories and (unknown := [c for c in categories if c not in cls.published]):
            problems.append(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; published: {list(cls.published)}")
        return problems

    def listing(self, category: str) -> Listing:
        if not self.root.is_dir():
            raise UserError(f"dataset root {str(self.root)!r} does not exist or is not a folder", key="root")
        listing = self.index(category)
        if not listing.train:
            raise UserError(f"{self.name}/{category}: no normal train images found under {str(self.root / category)!r}; "
                            f"expected {self.layout}")
        if not listing.test:
            raise UserError(f"{self.name}/{category}: no test images found under {str(self.root / category)!r}; expected {self.layout}")
        return listing

    def check(self, category: str) -> CheckRow:
        """The ``data check`` row: layout, pairing and sizes are problems; other counts are warnings."""
        row = CheckRow(category, published=self.expected(category))
        try:
            listing = self.listing(category)
        except UserError as err:
            row.problems.append(str(err).removeprefix("root: "))
            return row
        row.found = listing.counts()
        row.problems += listing.problems + size_problems(listing) + decode_problems(listing)
        if row.published is None:
            row.warnings.append("no published counts on record for this category")
        elif row.found != row.published:
            row.warnings.append(f"counts differ from the published {row.published} (a subset or another release?)")
        return row

    def fingerprint(self, category: str, *, seed: int) -> str:
        """Relative paths and sizes of every file the category uses."""
        listing = self.listing(category)
        files = [(str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p), p.stat().st_size)
                 for p in listing.files()]
        return digest({"files": files, "labels": [s.label for s in listing.test], "names": [s.name for s in listing.test]})[:16]

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        listing = self.listing(category)
        if listing.problems:
            raise UserError(f"{self.name}/{category}: {listing.problems[0]}"
                            + (f" (and {len(listing.problems) - 1} more problems; see robustad-bench data check {self.name})"
                               if len(listing.problems) > 1 else ""))
        size = self.image_size
        train = to_tensor(np.stack([read_rgb(p, size) for p in listing.train]))
        test = to_tensor(np.stack([read_rgb(s.image, size) for s in listing.test]))
        labels = np.array([s.label for s in listing.test])
        masks = None
        if self.has_masks:
            masks = torch.from_numpy(np.stack([read_mask(s, size) for s in listing.test]).astype(np.float32))
        if labels.min() == labels.max():
            log.warning("%s/%s: the test set has %s images only; image AUROC, AP and F1 are undefined for it",
                        self.name, category, "anomalous" if labels[0] else "normal")
        return Split(train, test, labels, masks, [s.name for s in listing.test])


def mvtec_index(root: Path, category: str, *, normal: str = "good", mask_names: tuple[str, ...] = ("{stem}_mask.png", "{stem}.png"),
                layout: str = "") -> Listing:
    """``<category>/train/<normal>``, ``test/<defect|normal>``, ``ground_truth/<defect>/<mask name>``.

    An anomalous image without a mask, and a mask without an image, are pairing problems.
    """
    folder = root / category
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise UserError(f"category folder {str(folder)!r} not found; categories under the root: {found}", key="categories")
    need_folder(folder / "train" / normal, layout)
    need_folder(folder / "test", layout)
    train = images_in(folder / "train" / normal)
    test, problems, used = [], [], set()
    for defect in sorted(d for d in (folder / "test").iterdir() if d.is_dir()):
        for image in images_in(defect):
            name = f"{defect.name}/{image.stem}"
            if defect.name == normal:
                test.append(Sample(image, 0, name))
                continue
            candidates = [folder / "ground_truth" / defect.name / m.format(stem=image.stem) for m in mask_names]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None:
                problems.append(f"anomalous image {str(image)!r} has no mask (looked for {candidates[0].name} in {str(candidates[0].parent)!r})")
                continue
            used.add(mask)
            test.append(Sample(image, 1, name, (mask,)))
    gt = folder / "ground_truth"
    orphans = [p for d in sorted(gt.iterdir()) if d.is_dir() for p in images_in(d) if p not in used] if gt.is_dir() else []
    if orphans:
        problems.append(listed([str(p) for p in orphans], "masks without an image"))
    return Listing(train, test, problems)


def split_normals(normals: list[Path], anomalous: list[Path], *, test_fraction: float, seed: int, category: str,
                  names: tuple[str, str] = ("good", "anomalous")) -> Listing:
    """Sets published without a train/test split (Head-CT, BrainMRI, Covid-19): a fixed,
    seeded share of the normal images is held out for testing with every anomalous one."""
    order = np.random.default_rng([seed, int(digest(category)[:8], 16)]).permutation(len(normals))
    n_test = round(test_fraction * len(normals))
    held = sorted(normals[i] for i in order[:n_test])
    train = sorted(normals[i] for i in order[n_test:])
    test = [Sample(p, 0, f"{names[0]}/{p.stem}") for p in held] + [Sample(p, 1, f"{names[1]}/{p.stem}") for p in sorted(anomalous)]
    return Listing(train, test)


def split_counts(normal: int, anomalous: int, test_fraction: float) -> Counts:
    held = round(test_fraction * normal)
    return Counts(normal - held, held, anomalous)
