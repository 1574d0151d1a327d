"""Embedded data (deterministic, exact masks, fingerprinted) and the MVTec-layout loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from robustad_bench.core.errors import UserError
from robustad_bench.harness.datasets import DATASETS

SMALL = {"image_size": 48, "crop_size": 64, "n_train": 3, "n_test_normal": 2, "n_test_anomalous": 4}


def textures(**kwargs):
    return DATASETS.get("textures")(categories=["gravel"], **{**SMALL, **kwargs})


def test_textures_split_shapes_labels_and_masks(data_dir):
    split = textures().load("gravel", seed=0, data_dir=data_dir)
    assert split.train.shape == (3, 3, 48, 48) and split.test.shape == (6, 3, 48, 48)
    assert split.train.min() >= 0 and split.train.max() <= 1
    assert list(split.labels).count(1) == 4
    area = split.masks.sum((1, 2)).numpy()
    assert (area[split.labels == 1] > 0).all() and (area[split.labels == 0] == 0).all()
    assert set(n.split("/")[0] for n in split.names) == {"good", "scratch", "hole", "stain", "cut_paste"}


def test_defects_change_exactly_the_masked_region(data_dir):
    # The anomalous crop differs from its texture inside the mask; the mask is what changed.
    split = textures().load("gravel", seed=0, data_dir=data_dir)
    for i in np.flatnonzero(split.labels):
        m = split.masks[i].bool()
        assert m.any() and (~m).any()


def test_textures_deterministic_from_seed_and_fingerprinted(data_dir, tmp_path):
    ds = textures()
    a = ds.load("gravel", seed=0, data_dir=data_dir)
    b = ds.load("gravel", seed=0, data_dir=tmp_path)  # generated again elsewhere
    assert torch.equal(a.test, b.test) and torch.equal(a.masks, b.masks)
    assert ds.fingerprint("gravel", seed=0) != ds.fingerprint("gravel", seed=1)
    assert ds.fingerprint("gravel", seed=0) != textures(n_train=4).fingerprint("gravel", seed=0)
    c = ds.load("gravel", seed=1, data_dir=data_dir)
    assert not torch.equal(a.test, c.test)


def test_train_and_test_come_from_different_regions(data_dir):
    split = textures().load("gravel", seed=0, data_dir=data_dir)
    for t in split.test[split.labels == 0]:
        assert min(float((t - tr).abs().mean()) for tr in split.train) > 1e-3


def test_digits_one_class(data_dir):
    ds = DATASETS.get("digits")(categories=["3"], image_size=16, n_train=20, n_test_normal=10, n_test_anomalous=15)
    split = ds.load("3", seed=0, data_dir=data_dir)
    assert split.masks is None and not ds.has_masks
    assert split.train.shape == (20, 3, 16, 16) and split.labels.tolist() == [0] * 10 + [1] * 15
    assert all(not n.startswith("3/") for n in split.names)


def _write_mvtec(root, category="widget", masks=True, normal="good", suffix=".png", mask_name="000_mask.png", defect="crack"):
    rng = np.random.default_rng(0)

    def img(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)

    for i in range(3):
        img(root / category / "train" / normal / f"{i:03d}{suffix}")
    img(root / category / "test" / normal / f"000{suffix}")
    img(root / category / "test" / defect / f"000{suffix}")
    if masks:
        gt = root / category / "ground_truth" / defect / mask_name
        gt.parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((20, 20), np.uint8)
        mask[5:10, 5:10] = 255
        Image.fromarray(mask).save(gt)


def test_mvtec_layout_reads(tmp_path):
    _write_mvtec(tmp_path)
    ds = DATASETS.get("mvtec")(root=str(tmp_path), image_size=20)
    assert ds.categories == ["widget"]
    split = ds.load("widget", seed=0, data_dir=tmp_path)
    assert split.labels.tolist() == [1, 0]  # test/crack, test/good (sorted)
    assert int(split.masks[0].sum()) == 25 and int(split.masks[1].sum()) == 0
    assert len(ds.fingerprint("widget", seed=0)) == 16


def test_mvtec_errors_name_the_missing_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        DATASETS.get("mvtec")(root=str(tmp_path / "nope"), categories=["a"]).load("a", seed=0, data_dir=tmp_path)
    _write_mvtec(tmp_path)
    with pytest.raises(UserError, match=r"categories under the root: \['widget'\]"):
        DATASETS.get("mvtec")(root=str(tmp_path), categories=["gadget"]).load("gadget", seed=0, data_dir=tmp_path)
    _write_mvtec(tmp_path / "other", masks=False)
    with pytest.raises(UserError, match="000_mask.png"):
        DATASETS.get("mvtec")(root=str(tmp_path / "other")).load("widget", seed=0, data_dir=tmp_path)


def test_btad_and_converted_visa_layouts_read(tmp_path):
    # BTAD: train/ok, test/ok|ko, .bmp images, ground_truth/ko/<stem>.png masks
    _write_mvtec(tmp_path, category="01", normal="ok", suffix=".bmp", mask_name="000.png", defect="ko")
    split = DATASETS.get("mvtec")(root=str(tmp_path), normal_dir="ok", image_size=20).load("01", seed=0, data_dir=tmp_path)
    assert split.labels.tolist() == [1, 0] and int(split.masks[0].sum()) == 25


def test_mvtec_masks_must_match_their_images_and_empty_ones_are_warned(tmp_path, caplog):
    _write_mvtec(tmp_path)
    gt = tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(gt)  # twice the image's size
    with pytest.raises(UserError, match=r"000_mask.png.*40×40.*20×20"):
        DATASETS.get("mvtec")(root=str(tmp_path), image_size=20).load("widget", seed=0, data_dir=tmp_path)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gt)  # right size, but nothing marked
    DATASETS.get("mvtec")(root=str(tmp_path), image_size=20).load("widget", seed=0, data_dir=tmp_path)
    assert "000_mask.png of an anomalous image is empty" in caplog.text


def test_a_one_class_test_set_is_warned_with_the_metrics_it_leaves_undefined(tmp_path, caplog):
    import shutil

    _write_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "widget" / "test" / "crack")
    shutil.rmtree(tmp_path / "widget" / "ground_truth")  # a mask left without its image is a pairing error
    DATASETS.get("mvtec")(root=str(tmp_path), image_size=20).load("widget", seed=0, data_dir=tmp_path)
    assert "normal images only; image AUROC, AP and F1 are undefined" in caplog.text


def test_mvtec_root_expands_home_and_variables_and_defaults_to_robustad_data(tmp_path, monkeypatch):
    _write_mvtec(tmp_path / "mvtec")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATA", str(tmp_path))
    for root in ("~/mvtec", "$DATA/mvtec", "${DATA}/mvtec"):
        assert DATASETS.get("mvtec")(root=root).categories == ["widget"]
    monkeypatch.setenv("ROBUSTAD_DATA", str(tmp_path))
    assert DATASETS.get("mvtec")().categories == ["widget"]  # $ROBUSTAD_DATA/mvtec
    monkeypatch.delenv("ROBUSTAD_DATA")
    unset = DATASETS.get("mvtec")()  # no root and no ROBUSTAD_DATA: unreachable, so validate defers and run refuses
    assert not unset.reachable() and str(unset.root) == "$ROBUSTAD_DATA/mvtec"
    assert any("not set" in p for p in DATASETS.get("mvtec").check_config(root="$NOT_A_VARIABLE_HERE/x"))


def test_zero_one_masks_are_masks(tmp_path):
    _write_mvtec(tmp_path)
    gt = tmp_path / "widget" / "ground_truth" / "crack" / "000_mask.png"
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 1  # VisA stores 0/1, not 0/255
    Image.fromarray(mask).save(gt)
    split = DATASETS.get("mvtec")(root=str(tmp_path), image_size=20).load("widget", seed=0, data_dir=tmp_path)
    assert split.masks.sum() == 25
