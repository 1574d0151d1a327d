"""MVTec LOCO AD (Bergmann et al., IJCV 2022): structural and logical anomalies.

    <root>/<category>/train/good/*.png            (validation/good is not used for fitting)
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/*.png
    <root>/<category>/ground_truth/<defect>/<stem>/000.png, 001.png, …

An anomalous image's mask is every layer in its ``ground_truth/<defect>/<stem>/`` folder
merged (each binarised with > 0: LOCO encodes the defect type in the pixel value).
"""

from __future__ import annotations

from .base import register_dataset
from .layout import Counts, Download, FolderDataset, Listing, Sample, images_in, listed, need_folder

DEFECTS = ("logical_anomalies", "structural_anomalies")


@register_dataset("mvtec_loco")
class MVTecLOCO(FolderDataset):
    name = "mvtec_loco"
    version = "1"
    has_masks = True
    layout = "<category>/train/good, <category>/test/{good,logical_anomalies,structural_anomalies}, " \
             "<category>/ground_truth/<defect>/<stem>/*.png"
    # (train, test good, test logical + structural) from the paper's Table 1
    published = {
        "breakfast_box": Counts(351, 102, 83 + 90), "juice_bottle": Counts(335, 94, 142 + 94),
        "pushpins": Counts(372, 138, 91 + 81), "screw_bag": Counts(360, 122, 137 + 82),
        "splicing_connectors": Counts(354, 119, 108 + 85),
    }
    download = Download(
        page="https://www.mvtec.com/company/research/datasets/mvtec-loco",
        licence="CC BY-NC-SA 4.0; the page asks for a form before the download",
        archives=(("https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/430647091-1646842701/"
                   "mvtec_loco_anomaly_detection.tar.xz", "sha256:9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687"),),
        extract="mkdir -p $ROBUSTAD_DATA/mvtec_loco && tar -xJf mvtec_loco_anomaly_detection.tar.xz -C $ROBUSTAD_DATA/mvtec_loco",
    )

    def index(self, category: str) -> Listing:
        folder = self.root / category
        need_folder(folder / "train" / "good", self.layout)
        train = images_in(folder / "train" / "good")
        test = [Sample(p, 0, f"good/{p.stem}") for p in images_in(folder / "test" / "good")]
        problems, orphans = [], []
        for defect in DEFECTS:
            images = images_in(folder / "test" / defect)
            for image in images:
                layers = tuple(images_in(folder / "ground_truth" / defect / image.stem))
                if not layers:
                    problems.append(f"anomalous image {str(image)!r} has no mask layers in "
                                    f"{str(folder / 'ground_truth' / defect / image.stem)!r}")
                    continue
                test.append(Sample(image, 1, f"{defect}/{image.stem}", layers))
            stems = {p.stem for p in images}
            gt = folder / "ground_truth" / defect
            orphans += [str(d) for d in sorted(gt.iterdir()) if d.is_dir() and d.name not in stems] if gt.is_dir() else []
        if orphans:
            problems.append(listed(orphans, "mask folders without an image"))
        return Listing(train, test, problems)
