"""Every published layout, as a tiny fixture the test writes: it loads, ``data check``
passes on it, and each kind of damage (missing mask, unpaired mask, wrong-size mask,
empty category) gives the documented error."""

from __future__ import annotations

import csv
import gzip
import pickle

import numpy as np
import pytest
from PIL import Image

from robustad_bench.core.errors import UserError
from robustad_bench.harness.cli import main
from robustad_bench.harness.datasets import DATASETS

SIZE = 20


def image(path, size=SIZE, seed=0, suffix=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def mask(path, size=SIZE, value=255, box=(5, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    m[box[0]:box[1], box[0]:box[1]] = value
    Image.fromarray(m).save(path)


def mvtec_like(root, category, *, normal="good", defect="crack", suffix=".png", mask_name="{stem}_mask.png", n_train=3):
    for i in range(n_train):
        image(root / category / "train" / normal / f"{i:03d}{suffix}", seed=i)
    image(root / category / "test" / normal / f"000{suffix}", seed=10)
    image(root / category / "test" / defect / f"000{suffix}", seed=11)
    mask(root / category / "ground_truth" / defect / mask_name.format(stem="000"))


def visa_raw(root, categories=("candle",), mask_value=1):
    rows = []
    for cat in categories:
        for i, (split, label) in enumerate([("train", "normal")] * 3 + [("test", "normal"), ("test", "anomaly")]):
            kind = "Normal" if label == "normal" else "Anomaly"
            img = f"{cat}/Data/Images/{kind}/{i:03d}.JPG"
            image(root / img, seed=i)
            m = ""
            if label == "anomaly":
                m = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
                mask(root / m, value=mask_value)  # VisA's masks are 0/1
            rows.append({"object": cat, "split": split, "label": label, "image": img, "mask": m})
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)


def loco(root, category="pushpins"):
    for i in range(3):
        image(root / category / "train" / "good" / f"{i:03d}.png", seed=i)
    image(root / category / "test" / "good" / "000.png", seed=5)
    for defect in ("logical_anomalies", "structural_anomalies"):
        image(root / category / "test" / defect / "000.png", seed=6)
    # two layers of one logical defect, with LOCO's per-type pixel values; merged with "any"
    mask(root / category / "ground_truth" / "logical_anomalies" / "000" / "000.png", value=11, box=(0, 4))
    mask(root / category / "ground_truth" / "logical_anomalies" / "000" / "001.png", value=23, box=(10, 14))
    mask(root / category / "ground_truth" / "structural_anomalies" / "000" / "000.png")


def headct(root):
    with (root / "labels.csv").open("w") as f:
        f.write("id, hemorrhage\n" + "".join(f"{i},{int(i >= 8)}\n" for i in range(12)))
    for i in range(12):
        image(root / "head_ct" / "head_ct" / f"{i:03d}.png", seed=i)


def brainmri(root):
    for i in range(6):
        image(root / "brain_tumor_dataset" / ("no" if i < 4 else "yes") / f"{i}.jpg", seed=i)


def tumor(root):
    for i in range(3):
        image(root / "Training" / "no_tumor" / f"{i}.jpg", seed=i)
    for cls in ("no_tumor", "glioma_tumor", "pituitary_tumor"):
        image(root / "Testing" / cls / "0.jpg", seed=7)


def covid(root):
    for i in range(8):
        image(root / "COVID-19_Radiography_Dataset" / "Normal" / "images" / f"Normal-{i}.png", seed=i)
    image(root / "COVID-19_Radiography_Dataset" / "COVID" / "images" / "COVID-1.png", seed=9)


def cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 20)]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))


def cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 40)):
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "coarse_labels": [i % 20 for i in range(n)],
                 "fine_labels": [i % 100 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))


def idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def mnist(root):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


WRITERS = {
    "mvtec": (lambda r: mvtec_like(r, "bottle"), "bottle", 1),
    "mpdd": (lambda r: mvtec_like(r, "tubes"), "tubes", 1),
    "wfdd": (lambda r: mvtec_like(r, "grid_cloth"), "grid_cloth", 1),
    "dtd_synthetic": (lambda r: mvtec_like(r, "Woven_001", defect="bad"), "Woven_001", 1),
    "btad": (lambda r: mvtec_like(r, "01", normal="ok", defect="ko", suffix=".bmp", mask_name="{stem}.png"), "01", 1),
    "visa": (visa_raw, "candle", 1),
    "mvtec_loco": (loco, "pushpins", 2),
    "headct": (headct, "all", 4),
    "brainmri": (brainmri, "all", 2),
    "tumor": (tumor, "all", 2),
    "covid": (covid, "all", 1),
    "cifar10": (cifar10, "cat", 18),
    "cifar100": (cifar100, "fish", 38),
    "mnist": (mnist, "3", 18),
    "fashion_mnist": (mnist, "dress", 18),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_published_layout_loads_and_passes_the_data_check(name, tmp_path, capsys):
    write, category, n_anomalous = WRITERS[name]
    write(tmp_path)
    dataset = DATASETS.get(name)(root=str(tmp_path), categories=[category], image_size=16)
    split = dataset.load(category, seed=0, data_dir=tmp_path)
    assert split.train.shape[1:] == (3, 16, 16) and split.test.shape[0] == len(split.labels) == len(split.names)
    assert int(split.labels.sum()) == n_anomalous and 0 < len(split.train)
    assert len(set(split.names)) == len(split.names)
    if dataset.has_masks:
        area = split.masks.sum((1, 2)).numpy()
        assert (area[split.labels == 1] > 0).all() and (area[split.labels == 0] == 0).all()
    else:
        assert split.masks is None
    assert len(dataset.fingerprint(category, seed=0)) == 16
    assert main(["data", "check", name, "--root", str(tmp_path), "--categories", category]) == 0
    out = capsys.readouterr().out
    assert f"| {category}" in out and "warning" in out  # a 5-image fixture is not the published release


def test_visa_masks_valued_0_1_count_and_loco_layers_merge(tmp_path):
    visa_raw(tmp_path / "visa", mask_value=1)
    split = DATASETS.get("visa")(root=str(tmp_path / "visa"), image_size=SIZE).load("candle", seed=0, data_dir=tmp_path)
    assert int(split.masks[split.labels == 1].sum()) == 25  # the 5×5 box of 1s, not an empty mask
    loco(tmp_path / "loco")
    split = DATASETS.get("mvtec_loco")(root=str(tmp_path / "loco"), image_size=SIZE).load("pushpins", seed=0, data_dir=tmp_path)
    logical = split.names.index("logical_anomalies/000")
    assert int(split.masks[logical].sum()) == 2 * 16  # both 4×4 layers


def test_published_counts_are_compared_as_warnings(tmp_path):
    mvtec_like(tmp_path, "bottle")
    row = DATASETS.get("mvtec")(root=str(tmp_path)).check("bottle")
    assert row.status == "warning" and str(row.published) == "209 / 20 / 63" and str(row.found) == "3 / 1 / 1"


def damaged(tmp_path, kind):
    """A VisA raw fixture with one kind of damage; returns what the error must name."""
    visa_raw(tmp_path)
    anomalous_mask = tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "004.png"
    if kind == "missing mask":
        anomalous_mask.unlink()
        return "004.png"
    if kind == "wrong-size mask":
        mask(anomalous_mask, size=2 * SIZE)
        return "40×40 but its image is 20×20"
    if kind == "missing image":
        (tmp_path / "candle" / "Data" / "Images" / "Normal" / "000.JPG").unlink()
        return "000.JPG"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing mask", "wrong-size mask", "missing image"])
def test_damaged_layouts_exit_2_with_the_table(kind, tmp_path, capsys):
    expected = damaged(tmp_path, kind)
    assert main(["data", "check", "visa", "--root", str(tmp_path), "--categories", "candle"]) == 2
    captured = capsys.readouterr()
    assert "| candle" in captured.out and "ERROR" in captured.out and expected in captured.out
    assert "layout problems: candle" in captured.err


def test_unpaired_mask_and_empty_category_in_mvtec_layout(tmp_path):
    mvtec_like(tmp_path, "bottle")
    mask(tmp_path / "bottle" / "ground_truth" / "crack" / "007_mask.png")  # no test/crack/007.png
    row = DATASETS.get("mvtec")(root=str(tmp_path)).check("bottle")
    assert row.status == "ERROR" and "1 masks without an image" in row.problems[0] and "007_mask.png" in row.problems[0]
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(UserError, match=r"no normal train images found under .*empty"):
        DATASETS.get("mvtec")(root=str(tmp_path), categories=["empty"]).load("empty", seed=0, data_dir=tmp_path)


def suite_on(tmp_path, dataset: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ndatasets: [{dataset}]\ndetectors: [{{name: patchcore, backbone: resnet18, weights: random}}]\n"
                    "attacks: [{name: none}]\n")
    return str(path)


def test_validate_and_run_refuse_damaged_data_before_any_compute(tmp_path, capsys):
    expected = damaged(tmp_path / "visa", "missing mask")
    suite = suite_on(tmp_path, f"{{name: visa, root: {tmp_path / 'visa'}, categories: [candle]}}")
    assert main(["validate", suite]) == 2
    err = capsys.readouterr().err
    assert "datasets[0]" in err and expected in err and "candle" in err
    out = tmp_path / "out"
    assert main(["run", suite, "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    assert expected in capsys.readouterr().err and not out.exists()


def test_unreachable_root_defers_in_validate_and_fails_run(tmp_path, capsys):
    suite = suite_on(tmp_path, f"{{name: visa, root: {tmp_path / 'absent'}}}")
    assert main(["validate", suite]) == 0
    assert "data check is deferred" in capsys.readouterr().out
    assert main(["run", suite, "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "datasets[0].root" in err and "absent" in err and "data prepare visa" in err


def test_raw_visa_no_longer_resolves_to_zero_cells(tmp_path, capsys):
    visa_raw(tmp_path / "visa", categories=("candle", "pcb1"))
    suite = suite_on(tmp_path, f"{{name: visa, root: {tmp_path / 'visa'}, categories: [candle, pcb1]}}")
    assert main(["validate", suite]) == 0
    assert "ok (2 cells)" in capsys.readouterr().out


def test_brats_export_from_nifti(tmp_path, capsys):
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    for case in range(4):
        name = f"BraTS2021_{case:05d}"
        flair = rng.uniform(50, 200, (24, 24, 12)).astype(np.float32)
        seg = np.zeros_like(flair, dtype=np.uint8)
        seg[8:16, 8:16, 6:] = 2  # a tumour in the upper slices
        for kind, volume in (("flair", flair), ("seg", seg)):
            path = tmp_path / "nifti" / name / f"{name}_{kind}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(path))
    from robustad_bench.harness.datasets.brats import ExportConfig, export

    counts = export(tmp_path / "nifti", tmp_path / "brats", ExportConfig(first=0, last=12, stride=1, min_tumour=10, test_fraction=0.5))
    assert counts.train == 2 * 6 and counts.test_normal == 2 * 6 and counts.test_anomalous == 2 * 6
    split = DATASETS.get("brats")(root=str(tmp_path / "brats"), image_size=24).load("flair", seed=0, data_dir=tmp_path)
    assert int(split.labels.sum()) == 12 and (split.masks[split.labels == 1].sum((1, 2)) == 64).all()
    assert main(["data", "check", "brats", "--root", str(tmp_path / "brats")]) == 0
    assert "| flair" in capsys.readouterr().out


def test_brats_export_of_files_that_are_not_nifti_names_them(tmp_path, capsys):
    pytest.importorskip("nibabel")
    name = "BraTS2021_00000"
    for kind in ("flair", "seg"):
        path = tmp_path / "nifti" / name / f"{name}_{kind}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not a volume")
    assert main(["data", "prepare", "brats", "--root", str(tmp_path / "out"), "--from", str(tmp_path / "nifti")]) == 2
    err = capsys.readouterr().err
    assert "as a NIfTI volume" in err and "flair.nii.gz" in err and "Traceback" not in err, err
