"""The output folder is never lost or mixed up: one run writes it at a time, finalize merges
with what is on disk, and another suite's folder is not written into by accident."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from robustad_bench.harness.cli import main


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustad_bench.harness.cli", *args]


def cell_ids(out) -> list[str]:
    return [json.loads(line)["cell_id"] for line in (out / "results.jsonl").read_text().splitlines()]


def test_two_concurrent_runs_into_one_folder_keep_every_row(tiny_suite, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--out", str(out), "--cache", str(cache), "--no-progress", "--wait"]
    procs = [subprocess.Popen(cli("run", str(tiny_suite), "--only", only, *common), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for only in ("pc.textures.*", "pc.digits.*")]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    listed = subprocess.run(cli("run", str(tiny_suite), "--dry-run"), capture_output=True, text=True).stdout.split()
    planned = [c for c in listed if c.startswith("pc.")]
    assert sorted(cell_ids(out)) == sorted(planned)  # both runs' rows, none lost
    assert not (out / ".lock").exists()


def test_another_suite_into_an_existing_folder_needs_append(tiny_suite, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--out", str(out), "--cache", str(cache), "--no-progress"]
    assert main(["run", str(tiny_suite), "--only", "pc.digits.*", *args]) == 0
    first = cell_ids(out)
    other = tmp_path / "other.yaml"
    other.write_text(tiny_suite.read_text().replace("name: tiny", "name: other").replace("eps: [8/255]", "eps: [4/255]"))
    assert main(["run", str(other), "--only", "pc.digits.*", *args]) == 2
    err = capsys.readouterr().err
    assert "holds the results of suite 'tiny'" in err and "--append" in err
    assert cell_ids(out) == first  # untouched
    same_name = tmp_path / "elsewhere" / "tiny.yaml"  # a different suite that shares the name
    same_name.parent.mkdir()
    same_name.write_text(textwrap.dedent(tiny_suite.read_text()))
    assert main(["run", str(same_name), "--only", "pc.digits.*", *args]) == 2
    assert main(["run", str(other), "--only", "pc.digits.*", "--append", *args]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["suite"] for r in rows} == {"tiny", "other"}  # its new cells were added...
    assert set(first) <= {r["cell_id"] for r in rows}  # ...and the first suite's rows kept
    assert main(["render", str(out)]) == 0


def test_a_busy_folder_is_exit_2_naming_the_holder(tiny_suite, tmp_path, capsys):
    from robustad_bench.harness.results import OutputLock

    out = tmp_path / "out"
    with OutputLock(out):
        assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is being written by process" in err and "--wait" in err


def test_a_replaced_checkpoint_is_computed_again(tmp_path):
    import timm
    import torch

    weights = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), weights)
    suite = tmp_path / "ckpt.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: ckpt
        datasets:
          - {{name: digits, categories: ["1"], image_size: 32, n_train: 10, n_test_normal: 6, n_test_anomalous: 6}}
        detectors:
          - {{name: zarnd, backbone: resnet18, input_size: 32, weights: {weights}}}
        attacks:
          - {{name: none}}
    """))
    args = ["run", str(suite), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    torch.manual_seed(1)
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), weights)  # other weights
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    before, after = (json.loads((tmp_path / d / "results.jsonl").read_text()) for d in ("a", "b"))
    assert before["config_hash"] != after["config_hash"]  # not served from the cache
    scores = [np.load(tmp_path / d / "cells" / r["cell_id"] / "scores.npz")["scores"] for d, r in (("a", before), ("b", after))]
    assert not np.allclose(*scores)  # the new weights' scores
