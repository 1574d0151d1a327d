"""Industrial sets published in MVTec's layout or a variant of it: BTAD, MPDD, WFDD,
DTD-Synthetic. Each entry is its published categories, counts and download page."""

from __future__ import annotations

from .base import register_dataset
from .layout import Counts, Download
from .mvtec import MVTecLayout


@register_dataset("btad")
class BTAD(MVTecLayout):
    """BTAD (beanTech, Mishra et al. 2021): ``<01|02|03>/train/ok``, ``test/ok``, ``test/ko``,
    ``ground_truth/ko/<stem>.png``; images are ``.bmp`` (01, 03) or ``.png`` (02)."""

    name = "btad"
    version = "1"
    has_masks = True
    normal_dir = "ok"
    mask_names = ("{stem}.png", "{stem}_mask.png")
    layout = "<01|02|03>/train/ok, <category>/test/<ok|ko>, <category>/ground_truth/ko/<stem>.png"
    published = {"01": Counts(400, 21, 49), "02": Counts(399, 30, 200), "03": Counts(1000, 41, 400)}
    download = Download(
        page="https://avires.dimi.uniud.it/papers/btad/",
        licence="CC BY-SA 4.0 (stated on the download page)",
        archives=(("https://avires.dimi.uniud.it/papers/btad/btad.zip",
                   "sha256:461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a"),),
        extract="unzip btad.zip -d /tmp/btad && mv /tmp/btad/BTech_Dataset_transformed $ROBUSTAD_DATA/btad",
        strip="BTech_Dataset_transformed",
    )


@register_dataset("mpdd")
class MPDD(MVTecLayout):
    """MPDD (Jezek et al., ICUMT 2021): metal parts, MVTec layout."""

    name = "mpdd"
    version = "1"
    has_masks = True
    layout = "<category>/train/good, <category>/test/<defect|good>, <category>/ground_truth/<defect>/<stem>_mask.png"
    published = {
        "bracket_black": Counts(289, 32, 47), "bracket_brown": Counts(185, 26, 51), "bracket_white": Counts(110, 30, 30),
        "connector": Counts(128, 30, 14), "metal_plate": Counts(54, 26, 71), "tubes": Counts(122, 32, 69),
    }
    download = Download(
        page="https://github.com/stepanje/MPDD",
        licence="CC BY-NC-SA 4.0 (see the repository's README)",
        extract="download from the link in the repository's README and unpack it so that "
                "$ROBUSTAD_DATA/mpdd/<category>/train/good exists",
    )


@register_dataset("wfdd")
class WFDD(MVTecLayout):
    """WFDD, the woven fabric set of GLASS (Chen et al., ECCV 2024): MVTec layout."""

    name = "wfdd"
    version = "1"
    has_masks = True
    layout = "<category>/train/good, <category>/test/<defect|good>, <category>/ground_truth/<defect>/<stem>_mask.png"
    # No per-split counts could be verified here: ``data check`` lists what it finds.
    published = {"grey_cloth": None, "grid_cloth": None, "pink_flower": None, "yellow_cloth": None}
    download = Download(
        page="https://github.com/cqylunlun/GLASS",
        licence="see the GLASS repository (research use)",
        extract="download WFDD from the link in the GLASS README and unpack it so that "
                "$ROBUSTAD_DATA/wfdd/<category>/train/good exists",
    )


@register_dataset("dtd_synthetic")
class DTDSynthetic(MVTecLayout):
    """DTD-Synthetic (Aota et al., WACV 2023): DTD textures with synthetic defects, MVTec layout."""

    name = "dtd_synthetic"
    version = "1"
    has_masks = True
    layout = "<category>/train/good, <category>/test/<bad|good>, <category>/ground_truth/bad/<stem>_mask.png"
    published = {c: None for c in (
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127")}
    download = Download(
        page="the data link in Aota et al., 'Zero-shot versus Many-shot: Unsupervised Texture Anomaly Detection' (WACV 2023)",
        licence="the Describable Textures Dataset's terms (research use)",
        extract="unpack the archive so that $ROBUSTAD_DATA/dtd_synthetic/<category>/train/good exists",
    )
