"""VisA (Zou et al., ECCV 2022) in its official raw layout, split by ``split_csv/1cls.csv``.

    <root>/split_csv/1cls.csv                     object,split,label,image,mask
    <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png    0/1 or 0/255: binarised with > 0

The csv's paths are relative to the root. A folder already converted to MVTec layout
(anomalib's or spot-diff's ``prepare_data.py``) loads as ``{name: mvtec, categories: [...]}``.
"""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

from robustad_bench.core.errors import UserError

from .base import register_dataset
from .layout import Counts, Download, FolderDataset, Listing, Sample, listed

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


@register_dataset("visa")
class VisA(FolderDataset):
    name = "visa"
    version = "1"
    has_masks = True
    layout = "split_csv/1cls.csv and <category>/Data/Images/{Normal,Anomaly}, <category>/Data/Masks/Anomaly (the raw VisA_20220922.tar)"
    # (train normal, test normal, test anomalous) as split_csv/1cls.csv assigns them
    published = {
        "candle": Counts(900, 100, 100), "capsules": Counts(542, 60, 100), "cashew": Counts(450, 50, 100),
        "chewinggum": Counts(453, 50, 100), "fryum": Counts(450, 50, 100), "macaroni1": Counts(900, 100, 100),
        "macaroni2": Counts(900, 100, 100), "pcb1": Counts(904, 100, 100), "pcb2": Counts(901, 100, 100),
        "pcb3": Counts(905, 101, 100), "pcb4": Counts(904, 101, 100), "pipe_fryum": Counts(450, 50, 100),
    }
    download = Download(
        page="https://github.com/amazon-science/spot-diff",
        licence="CC BY 4.0 (https://registry.opendata.aws/visa/)",
        archives=(("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                   "sha256:2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"),),
        extract="mkdir -p $ROBUSTAD_DATA/visa && tar -xf VisA_20220922.tar -C $ROBUSTAD_DATA/visa",
    )

    @cached_property
    def rows(self) -> list[dict[str, str]]:
        path = self.root / SPLIT_CSV
        if not path.is_file():
            hint = " (it holds train/good folders: use {name: mvtec, categories: [...]} for a converted copy)" \
                if any(self.root.glob("*/train/good")) else ""
            raise UserError(f"{str(path)!r} not found: expected the raw VisA layout, {self.layout}{hint}", key="root")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{str(path)!r} lacks the column(s) {missing}; expected {', '.join(COLUMNS)}")
            return list(reader)

    def index(self, category: str) -> Listing:
        rows = [r for r in self.rows if r["object"] == category]
        if not rows:
            found = sorted({r["object"] for r in self.rows})
            raise UserError(f"{str(self.root / SPLIT_CSV)!r} has no row for category {category!r}; it lists {found}", key="categories")
        train, test, missing = [], [], []
        for r in rows:
            image = self.root / r["image"]
            if not image.is_file():
                missing.append(str(image))
                continue
            if r["split"] == "train":
                if r["label"] == "normal":  # 1cls trains on normal images only
                    train.append(image)
            elif r["label"] == "normal":
                test.append(Sample(image, 0, f"good/{image.stem}"))
            elif not r["mask"] or not (self.root / r["mask"]).is_file():
                missing.append(str(self.root / r["mask"]) if r["mask"] else f"the mask of {image} (the csv gives none)")
            else:
                test.append(Sample(image, 1, f"bad/{image.stem}", (self.root / r["mask"],)))
        problems = [listed(missing, f"files listed in {SPLIT_CSV} are missing")] if missing else []
        return Listing(sorted(train), sorted(test, key=lambda s: (s.label, s.name)), problems)
