"""MVTec AD (Bergmann et al., CVPR 2019) and any folder in its layout.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect|good>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

With ``categories`` given, any folder in this layout loads as ``mvtec`` (VisA or BTAD
converted by anomalib, the generated ``textures``); without, the categories are the
folders under the root that have ``train/<normal_dir>`` — or, when the root is not
reachable here, MVTec AD's 15.
"""

from __future__ import annotations

from typing import Annotated

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import AtLeast

from .base import register_dataset
from .layout import Counts, Download, FolderDataset, Listing, mvtec_index

NORMAL = "good"
LAYOUT = "<category>/train/good, <category>/test/<defect|good>, <category>/ground_truth/<defect>/<stem>_mask.png"

# (train, test good, test defective) per category, from the paper's Table 1
MVTEC_AD = {
    "bottle": Counts(209, 20, 63), "cable": Counts(224, 58, 92), "capsule": Counts(219, 23, 109),
    "carpet": Counts(280, 28, 89), "grid": Counts(264, 21, 57), "hazelnut": Counts(391, 40, 70),
    "leather": Counts(245, 32, 92), "metal_nut": Counts(220, 22, 93), "pill": Counts(267, 26, 141),
    "screw": Counts(320, 41, 119), "tile": Counts(230, 33, 84), "toothbrush": Counts(60, 12, 30),
    "transistor": Counts(213, 60, 40), "wood": Counts(247, 19, 60), "zipper": Counts(240, 32, 119),
}


class MVTecLayout(FolderDataset):
    """A published set in MVTec's layout; subclasses set name, ``published`` and ``download``."""

    normal_dir = NORMAL
    mask_names: tuple[str, ...] = ("{stem}_mask.png", "{stem}.png")

    def index(self, category: str) -> Listing:
        return mvtec_index(self.root, category, normal=self.normal_dir, mask_names=self.mask_names, layout=self.layout)


@register_dataset("mvtec")
class MVTec(MVTecLayout):
    name = "mvtec"
    version = "2"
    has_masks = True
    layout = LAYOUT
    open_categories = True
    published = MVTEC_AD
    download = Download(
        page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        licence="CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/); the page asks for a form before the download",
        archives=(("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
                   "mvtec_anomaly_detection.tar.xz", "sha256:cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"),),
        extract="mkdir -p $ROBUSTAD_DATA/mvtec && tar -xJf mvtec_anomaly_detection.tar.xz -C $ROBUSTAD_DATA/mvtec",
    )

    def __init__(self, root: str | None = None, categories: list[str] | None = None,
                 image_size: Annotated[int, AtLeast(8)] = 256, normal_dir: str = NORMAL):
        super().__init__(root, categories, image_size)
        self.normal_dir = normal_dir  # "good" (MVTec, VisA converted, MPDD) or "ok" (BTAD)

    @property
    def categories(self) -> list[str]:
        if self._categories:
            return list(self._categories)
        if not self.root.is_dir():
            return list(self.published)  # the data check is deferred: validate says so
        found = sorted(p.name for p in self.root.iterdir() if (p / "train" / self.normal_dir).is_dir())
        if not found:
            raise UserError(f"no category in MVTec layout ({LAYOUT.replace('good', self.normal_dir)}) under {str(self.root)!r}",
                            key="root")
        return found
