"""Bad data and hostile names, end to end: a suite never runs code, a damaged image is named
by ``data check`` and never crashes a run, 16-bit images load by their range, and a thin
defect keeps its pixels on the whole path from the mask file to the saved mask."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from robustad_bench.harness.cli import main
from robustad_bench.harness.datasets.layout import read_rgb

SIZE = 24


def image(path, size=SIZE, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def mvtec(root, *, size=SIZE, n_train=4, scratches=()):
    """One category ``thing`` in MVTec layout; ``scratches``: (row, first column, last column)
    of a one-pixel-high scratch per anomalous test image (default: one box)."""
    for i in range(n_train):
        image(root / "thing" / "train" / "good" / f"{i:03d}.png", size, seed=i)
    for i in range(2):
        image(root / "thing" / "test" / "good" / f"{i:03d}.png", size, seed=10 + i)
    for i, (row, first, last) in enumerate(scratches or [(5, 5, 10)]):
        image(root / "thing" / "test" / "scratch" / f"{i:03d}.png", size, seed=20 + i)
        m = np.zeros((size, size), np.uint8)
        m[row, first:last + 1] = 255
        (root / "thing" / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(root / "thing" / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


def suite(tmp_path, root, *, input_size=SIZE, image_size=SIZE, attacks="  - {name: none}\n", extra=""):
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: probe\n{extra}datasets:\n  - {{name: mvtec, root: {root}, categories: [thing], image_size: {image_size}}}\n"
                    f"detectors:\n  - {{name: patchcore, backbone: resnet18, input_size: {input_size}, blur_sigma: 1.0}}\n"
                    f"attacks:\n{attacks}")
    return path


@pytest.mark.parametrize("kind", ["dataset", "detector", "attack"])
def test_a_suite_naming_a_callable_that_is_not_its_kind_runs_nothing(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = ("name: probe\ndatasets:\n  - {name: digits, categories: ['1'], image_size: 32, n_train: 4, n_test_normal: 2, "
            "n_test_anomalous: 2}\ndetectors:\n  - {name: patchcore, backbone: resnet18, input_size: 32}\n"
            "attacks:\n  - {name: none}\n")
    hostile = {"dataset": ("{name: digits, categories:", '{name: "os:system", command: "touch PWNED", categories:'),
               "detector": ("{name: patchcore,", '{name: "os:system", command: "touch PWNED",'),
               "attack": ("{name: none}", '{name: "os:system", command: "touch PWNED"}')}[kind]
    (tmp_path / "s.yaml").write_text(text.replace(*hostile))
    for argv in (["validate", "s.yaml"], ["run", "s.yaml", "--out", "o", "--cache", "c", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "os:system" in err and "never runs code" in err and "Traceback" not in err, err
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("damage", ["corrupt", "zero-byte", "text", "bomb"])
def test_a_damaged_image_is_named_by_data_check_and_refused_before_a_run(damage, tmp_path, capsys):
    root = mvtec(tmp_path / "data")
    bad = root / "thing" / "train" / "good" / "001.png"
    if damage == "corrupt":
        bad.write_bytes(bad.read_bytes()[:60])
    elif damage == "zero-byte":
        bad.write_bytes(b"")
    elif damage == "text":
        bad.write_text("not an image")
    else:  # a header claiming 100000×100000 pixels
        Image.new("L", (1, 1)).save(bad)
        data = bytearray(bad.read_bytes())
        data[16:24] = (100000).to_bytes(4, "big") * 2
        bad.write_bytes(bytes(data))
    assert main(["data", "check", "mvtec", "--root", str(root)]) == 2
    err = capsys.readouterr()
    assert "001.png" in err.out + err.err and "Traceback" not in err.err, err
    path = suite(tmp_path, root)
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "001.png" in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_group_that_fails_is_a_failed_row_and_later_groups_still_run(tmp_path, capsys):
    """A holdout leaving no train image fails its group (once: ``_failed_row`` was unpacked as
    a pair, a ValueError that lost the message and every later group)."""
    root = mvtec(tmp_path / "data", n_train=1)
    digits = "  - {name: digits, categories: ['1'], image_size: 24, n_train: 4, n_test_normal: 2, n_test_anomalous: 2}\n"
    path = suite(tmp_path, root, extra="holdout: 0.5\nthreshold: normal-quantile:0.9\n")
    path.write_text(path.read_text().replace("datasets:\n", "datasets:\n" + digits))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "leaves none to fit on" in err and "Traceback" not in err, err
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"]: r["status"] for r in rows} == {"mvtec": "failed", "digits": "ok"}


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_8_and_16_bit_images_load_scaled_by_their_range(suffix, tmp_path):
    ramp = np.linspace(0, 1, SIZE * SIZE).reshape(SIZE, SIZE)
    eight, sixteen = tmp_path / f"8{suffix}", tmp_path / f"16{suffix}"
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(eight)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")  # a real 16-bit file
    a, b = read_rgb(eight, SIZE).astype(int), read_rgb(sixteen, SIZE).astype(int)
    assert abs(b.mean() / 255 - 0.5) < 0.01 and np.abs(a - b).max() <= 1


def test_thin_scratches_keep_every_column_from_the_file_to_the_saved_mask(tmp_path):
    """256-px one-pixel scratches spanning 192 px, a 64-px detector: at 64 px each scratch
    covers 48 columns, and the saved mask keeps at least that many anomalous pixels."""
    scratches = [(37, 32, 223), (130, 40, 231), (201, 10, 201)]
    root = mvtec(tmp_path / "data", size=256, n_train=2, scratches=scratches)
    path = suite(tmp_path, root, input_size=64, image_size=256,
                 attacks="  - {name: none}\n  - {name: fgsm, eps: 8/255, objective: localization}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    for cell in (tmp_path / "o" / "cells").iterdir():
        with np.load(cell / "scores.npz") as arrays:
            masks, labels = arrays["masks"], arrays["labels"]
        assert masks.shape[-1] == 64
        for (_, first, last), m in zip(scratches, masks[labels == 1]):
            columns = (last + 1) // 4 - first // 4
            assert m.sum() >= columns, (m.sum(), columns)


def test_a_localization_attack_on_a_detector_without_a_map_is_skipped_with_a_note(tmp_path, caplog):
    """ZARND has no anomaly map: SegPGD's objective would be 0 on it, yet its cell lowered
    detection AUROC and entered the robust AUROC. Now there is no such cell, and a note says so."""
    path = tmp_path / "s.yaml"
    path.write_text("name: nomap\ndatasets:\n  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 4, "
                    "n_test_normal: 2, n_test_anomalous: 2}\ndetectors:\n  - {name: zarnd, backbone: resnet18, input_size: 64}\n"
                    "  - {name: patchcore, backbone: resnet18, input_size: 64}\n"
                    "attacks:\n  - {name: none}\n  - {name: segpgd, eps: 8/255, steps: 2}\n")
    assert main(["validate", str(path)]) == 0
    assert "'zarnd' has no anomaly map" in caplog.text and "segpgd" in caplog.text, caplog.text
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["detector"], r["attack"]) for r in rows) == [("patchcore", "none"), ("patchcore", "segpgd"), ("zarnd", "none")]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_full_disk_or_an_unwritable_folder_is_exit_2_naming_the_path(error, tmp_path, capsys, monkeypatch):
    """Root ignores permissions and no disk fills on demand: the store's write fails as the OS
    would make it fail, in the middle of a run; the user reads which path and what to do, and
    a rerun with room completes the run."""
    from robustad_bench.harness.results import ResultStore

    path = tmp_path / "s.yaml"
    path.write_text("name: full\ndatasets:\n  - {name: digits, categories: ['1'], image_size: 24, n_train: 4, n_test_normal: 2, "
                    "n_test_anomalous: 2}\ndetectors:\n  - {name: patchcore, backbone: resnet18, input_size: 24}\n"
                    "attacks:\n  - {name: none}\n  - {name: fgsm, eps: 8/255}\n")
    argv = ["run", str(path), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--no-progress"]
    add = ResultStore.add

    def failing(self, row, arrays):
        if "fgsm" in row["cell_id"]:
            raise OSError(error, os.strerror(error), str(self.path))
        add(self, row, arrays)

    monkeypatch.setattr(ResultStore, "add", failing)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot write '{tmp_path / 'o' / 'results.jsonl'}'" in err and "Traceback" not in err, err
    monkeypatch.setattr(ResultStore, "add", add)
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["attack"] for r in rows) == ["fgsm", "none"] and all(r["status"] == "ok" for r in rows)


def test_a_localization_attack_on_a_dataset_without_masks_is_a_visible_note(tmp_path, caplog):
    path = tmp_path / "s.yaml"
    path.write_text("name: nomask\ndatasets:\n  - {name: digits, categories: ['1'], image_size: 24, n_train: 4, n_test_normal: 2, "
                    "n_test_anomalous: 2}\ndetectors:\n  - {name: patchcore, backbone: resnet18, input_size: 24}\n"
                    "attacks:\n  - {name: none}\n  - {name: fgsm, eps: 8/255, objective: localization}\n")
    assert main(["validate", str(path)]) == 0
    assert "dataset 'digits' has no pixel masks" in caplog.text and "fgsm" in caplog.text, caplog.text
