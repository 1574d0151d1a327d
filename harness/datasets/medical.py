"""Medical image-level sets (AD only: no masks) in their published Kaggle layouts.

Head-CT, BrainMRI and Covid-19 are published without a train/test split: a fixed share
``test_fraction`` of the normal images, drawn with ``split_seed``, is held out and tested
with every anomalous image; the rest is the normal train set. Both keys are recorded in
every row's dataset config. Tumor is published split (``Training``/``Testing``).
"""

from __future__ import annotations

import csv
from abc import abstractmethod
from typing import Annotated

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import AtLeast, NonNegativeInt

from .base import register_dataset
from .layout import (
    Counts,
    Download,
    FolderDataset,
    Listing,
    Sample,
    images_in,
    need_folder,
    split_counts,
    split_normals,
)

KAGGLE = ("Kaggle asks for a login: the kaggle CLI (pip install kaggle) reads your API token from ~/.kaggle/kaggle.json "
          "(kaggle.com → Settings → API → Create New Token); robustad-bench stores no credentials")

SINGLE = "all"  # the one category of a set that has no categories


class HeldOutNormals(FolderDataset):
    """A set published as normal and anomalous images only; the split is ``split_normals``."""

    has_masks = False
    totals: tuple[int, int] = (0, 0)  # published (normal, anomalous) image counts

    def __init__(self, root: str | None = None, categories: list[str] | None = None,
                 image_size: Annotated[int, AtLeast(8)] = 224, test_fraction: float = 0.25, split_seed: NonNegativeInt = 0):
        super().__init__(root, categories, image_size)
        self.test_fraction = test_fraction
        self.split_seed = split_seed

    @classmethod
    def check_config(cls, **kwargs) -> list[str]:
        problems = super().check_config(**kwargs)
        if not 0 < kwargs.get("test_fraction", 0.25) < 1:
            problems.append(f"test_fraction must be in (0, 1), got {kwargs['test_fraction']}")
        return problems

    published = {SINGLE: None}

    def expected(self, category: str) -> Counts:
        return split_counts(*self.totals, self.test_fraction)

    def index(self, category: str) -> Listing:
        normals, anomalous = self.images()
        return split_normals(normals, anomalous, test_fraction=self.test_fraction, seed=self.split_seed, category=self.name)

    @abstractmethod
    def images(self) -> tuple[list, list]:
        """(normal image paths, anomalous image paths) as published."""


@register_dataset("headct")
class HeadCT(HeldOutNormals):
    """Head-CT (Kitamura, Kaggle "head-ct-hemorrhage"): ``labels.csv`` (id, hemorrhage) and
    ``head_ct/head_ct/<id:03d>.png``; 100 normal and 100 hemorrhage slices."""

    name = "headct"
    version = "1"
    layout = "labels.csv (columns id, hemorrhage) and head_ct/head_ct/<id:03d>.png"
    totals = (100, 100)
    download = Download(
        page="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
        licence="see the Kaggle page (Data files © original authors)",
        extract="kaggle datasets download felipekitamura/head-ct-hemorrhage && unzip head-ct-hemorrhage.zip -d $ROBUSTAD_DATA/headct",
        note=KAGGLE,
    )

    def images(self) -> tuple[list, list]:
        labels = self.root / "labels.csv"
        if not labels.is_file():
            raise UserError(f"{str(labels)!r} not found: expected {self.layout}", key="root")
        folder = next((f for f in (self.root / "head_ct" / "head_ct", self.root / "head_ct", self.root) if any(f.glob("*.png"))), None)
        if folder is None:
            raise UserError(f"no .png slices under {str(self.root / 'head_ct' / 'head_ct')!r}: expected {self.layout}")
        with labels.open(newline="") as f:
            rows = [{k.strip(): v.strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
        if not rows or not {"id", "hemorrhage"} <= set(rows[0]):
            raise UserError(f"{str(labels)!r} must have the columns id, hemorrhage")
        normals, anomalous, missing = [], [], []
        for r in rows:
            image = folder / f"{int(r['id']):03d}.png"
            if not image.is_file():
                missing.append(str(image))
            (anomalous if r["hemorrhage"] == "1" else normals).append(image)
        if missing:
            raise UserError(f"{len(missing)} slice(s) listed in {str(labels)!r} are missing, e.g. {missing[0]!r}")
        return normals, anomalous


@register_dataset("brainmri")
class BrainMRI(HeldOutNormals):
    """BrainMRI (Chakrabarty, Kaggle "brain-mri-images-for-brain-tumor-detection"):
    ``no/`` (98 normal) and ``yes/`` (155 tumour) images, optionally under ``brain_tumor_dataset/``."""

    name = "brainmri"
    version = "1"
    layout = "no/ and yes/ image folders (or brain_tumor_dataset/no, brain_tumor_dataset/yes)"
    totals = (98, 155)
    download = Download(
        page="https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
        licence="see the Kaggle page",
        extract="kaggle datasets download navoneel/brain-mri-images-for-brain-tumor-detection && "
                "unzip brain-mri-images-for-brain-tumor-detection.zip -d $ROBUSTAD_DATA/brainmri",
        note=KAGGLE,
    )

    def images(self) -> tuple[list, list]:
        base = self.root / "brain_tumor_dataset" if (self.root / "brain_tumor_dataset" / "no").is_dir() else self.root
        for sub in ("no", "yes"):
            need_folder(base / sub, self.layout)
        return images_in(base / "no"), images_in(base / "yes")


@register_dataset("covid")
class Covid(HeldOutNormals):
    """COVID-19 Radiography Database (Chowdhury et al.; Rahman et al.), the Kaggle release:
    ``Normal/images`` and ``COVID/images`` (lung-opacity and viral-pneumonia folders unused)."""

    name = "covid"
    version = "1"
    layout = "Normal/images and COVID/images (optionally under COVID-19_Radiography_Dataset/)"
    totals = (10192, 3616)
    download = Download(
        page="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
        licence="see the Kaggle page (research use, cite the two papers)",
        extract="kaggle datasets download tawsifurrahman/covid19-radiography-database && "
                "unzip covid19-radiography-database.zip -d $ROBUSTAD_DATA/covid",
        note=KAGGLE,
    )

    def images(self) -> tuple[list, list]:
        inner = self.root / "COVID-19_Radiography_Dataset"
        base = inner if inner.is_dir() else self.root
        found = {}
        for sub in ("Normal", "COVID"):
            folder = base / sub / "images" if (base / sub / "images").is_dir() else base / sub
            need_folder(folder, self.layout)
            found[sub] = images_in(folder)
        return found["Normal"], found["COVID"]


@register_dataset("tumor")
class Tumor(FolderDataset):
    """Brain Tumor Classification (MRI) (Bhuvaji et al., Kaggle): ``Training/`` and
    ``Testing/``, each with glioma_tumor, meningioma_tumor, no_tumor, pituitary_tumor.
    Normal = ``no_tumor``; train = ``Training/no_tumor``; test = all of ``Testing``."""

    name = "tumor"
    version = "1"
    has_masks = False
    layout = "Training/no_tumor and Testing/{no_tumor,glioma_tumor,meningioma_tumor,pituitary_tumor}"
    published = {SINGLE: Counts(395, 105, 100 + 115 + 74)}
    download = Download(
        page="https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri",
        licence="MIT (stated on the Kaggle page)",
        extract="kaggle datasets download sartajbhuvaji/brain-tumor-classification-mri && "
                "unzip brain-tumor-classification-mri.zip -d $ROBUSTAD_DATA/tumor",
        note=KAGGLE,
    )

    def index(self, category: str) -> Listing:
        need_folder(self.root / "Training" / "no_tumor", self.layout)
        need_folder(self.root / "Testing", self.layout)
        test = [Sample(p, int(d.name != "no_tumor"), f"{'good' if d.name == 'no_tumor' else d.name}/{p.stem}")
                for d in sorted(self.root.joinpath("Testing").iterdir()) if d.is_dir() for p in images_in(d)]
        return Listing(images_in(self.root / "Training" / "no_tumor"), test)
