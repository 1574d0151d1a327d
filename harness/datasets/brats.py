"""BraTS2021 (Baid et al. 2021) as 2-D FLAIR slices with tumour masks, in MVTec layout.

BraTS ships 3-D NIfTI volumes (``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,seg}.nii.gz``);
``robustad-bench data prepare brats --from NIFTI_DIR --root OUT`` exports them once:

- cases are split by patient: a seeded ``test_fraction`` of the cases is the test set, so
  no patient is in both;
- from every case, the axial slices ``first, first + stride, … < last`` (the brain's
  middle, where FLAIR shows most tissue) are kept when at least ``min_brain`` of the slice
  is brain; a slice is a tumour slice when its segmentation marks at least ``min_tumour``
  pixels, normal when it marks none, and dropped in between (too small to call);
- train = the normal slices of the train cases; test = every kept slice of the test cases;
- intensities are scaled per volume to its brain's 99.5th percentile, written as 8-bit PNG;
  masks are the segmentation's non-zero voxels (all tumour labels), 0/255 PNG.

The export writes ``export.json`` (its parameters and the counts it produced), which is
what ``data check brats`` compares a folder with. nibabel is an optional extra
(``pip install robustad-bench[medical]``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robustad_bench.core.errors import UserError

from .base import register_dataset
from .layout import Counts, Download
from .mvtec import MVTecLayout

log = logging.getLogger(__name__)
CATEGORY = "flair"
MANIFEST = "export.json"


@dataclass(frozen=True)
class ExportConfig:
    first: int = 60
    last: int = 100
    stride: int = 4
    min_brain: float = 0.1
    min_tumour: int = 50
    test_fraction: float = 0.2
    seed: int = 0


@register_dataset("brats")
class BraTS(MVTecLayout):
    name = "brats"
    version = "1"
    has_masks = True
    layout = f"{CATEGORY}/train/good, {CATEGORY}/test/{{good,tumor}}, {CATEGORY}/ground_truth/tumor/<stem>_mask.png " \
             "(written by robustad-bench data prepare brats --from NIFTI_DIR)"
    published = {CATEGORY: None}
    download = Download(
        page="http://braintumorsegmentation.org/ (BraTS 2021 Task 1 training data, after registering on Synapse)",
        licence="the BraTS 2021 data use agreement (registration on Synapse)",
        extract="tar -xf BraTS2021_Training_Data.tar -C /tmp/brats_nifti && "
                "robustad-bench data prepare brats --from /tmp/brats_nifti --root $ROBUSTAD_DATA/brats",
        note="nibabel is needed for the export: pip install 'robustad-bench[medical]'",
    )

    def expected(self, category: str) -> Counts | None:
        """The counts the export recorded (BraTS has no published 2-D split)."""
        path = self.root / MANIFEST
        if not path.is_file():
            return None
        counts = json.loads(path.read_text()).get("counts", {})
        return Counts(counts["train"], counts["test_normal"], counts["test_anomalous"]) if counts else None


def _load(path: Path) -> np.ndarray:
    import nibabel  # optional: only the export needs it

    try:
        volume = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)
    except Exception as err:  # nibabel's ImageFileError, a gzip or EOF error on a damaged file, ...
        raise UserError(f"cannot read {str(path)!r} as a NIfTI volume: {type(err).__name__}: {err}", key="--from") from None
    if volume.ndim != 3:
        raise UserError(f"{str(path)!r} holds a {volume.ndim}-D array; a BraTS volume is 3-D", key="--from")
    return volume


def _png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rot90(array)).save(path)  # rot90: NIfTI's (x, y) to an upright image


def export_case(flair_path: Path, out: Path, *, test: bool, config: ExportConfig) -> Counts:
    case = flair_path.name.removesuffix(".nii.gz").removesuffix("_flair")
    seg_path = flair_path.with_name(f"{case}_seg.nii.gz")
    if not seg_path.is_file():
        raise UserError(f"{str(flair_path)!r} has no segmentation {seg_path.name!r} next to it")
    flair, seg = _load(flair_path), _load(seg_path)
    if flair.shape != seg.shape:
        raise UserError(f"{str(seg_path)!r} is {seg.shape} but its FLAIR volume is {flair.shape}")
    brain = flair > 0
    scale = float(np.percentile(flair[brain], 99.5)) if brain.any() else 1.0
    image = (np.clip(flair / max(scale, 1e-6), 0, 1) * 255).astype(np.uint8)
    counts = [0, 0, 0]
    for z in range(config.first, min(config.last, flair.shape[2]), config.stride):
        if brain[:, :, z].mean() < config.min_brain:
            continue
        tumour = int((seg[:, :, z] > 0).sum())
        stem = f"{case}_{z:03d}"
        if tumour == 0:
            _png(image[:, :, z], out / ("test/good" if test else "train/good") / f"{stem}.png")
            counts[1 if test else 0] += 1
        elif tumour >= config.min_tumour and test:
            _png(image[:, :, z], out / "test/tumor" / f"{stem}.png")
            _png(((seg[:, :, z] > 0) * 255).astype(np.uint8), out / "ground_truth/tumor" / f"{stem}_mask.png")
            counts[2] += 1
    return Counts(*counts)


def export(nifti_dir: str | Path, out_root: str | Path, config: ExportConfig = ExportConfig()) -> Counts:
    """Write the 2-D export of every case under ``nifti_dir`` to ``out_root/flair``."""
    nifti_dir, out_root = Path(nifti_dir).expanduser(), Path(out_root).expanduser()
    cases = sorted(nifti_dir.rglob("*_flair.nii.gz"))
    if not cases:
        raise UserError(f"no *_flair.nii.gz volumes under {str(nifti_dir)!r}; expected BraTS2021_XXXXX/BraTS2021_XXXXX_flair.nii.gz",
                        key="--from")
    try:
        import nibabel  # noqa: F401
    except ImportError:
        raise UserError("the BraTS export needs nibabel: pip install 'robustad-bench[medical]'") from None
    order = np.random.default_rng(config.seed).permutation(len(cases))
    test_cases = {cases[i] for i in order[: max(1, round(config.test_fraction * len(cases)))]}
    total = Counts(0, 0, 0)
    for path in cases:
        c = export_case(path, out_root / CATEGORY, test=path in test_cases, config=config)
        total = Counts(total.train + c.train, total.test_normal + c.test_normal, total.test_anomalous + c.test_anomalous)
    manifest = {"source": str(nifti_dir), "cases": len(cases), "test_cases": len(test_cases), "config": asdict(config),
                "counts": {"train": total.train, "test_normal": total.test_normal, "test_anomalous": total.test_anomalous}}
    (out_root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return total
