"""Transfer cells: crafted on another detector of the suite, scored on the target."""

from __future__ import annotations

import json
import textwrap

import pytest

from robustad_bench.core.errors import SuiteErrors
from robustad_bench.harness.cli import main
from robustad_bench.harness.suite import parse_suite

SUITE = """
name: transfer-tiny
seed: 0
batch_size: 8
map_size: 16
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 6, n_test_normal: 4, n_test_anomalous: 4}
detectors:
  - {name: patchcore, label: source, backbone: resnet18, input_size: 64, blur_sigma: 1.0}
  - {name: zarnd, label: target, backbone: resnet18, input_size: 64}
attacks:
  - {name: none}
  - {name: transfer, source: source, eps: 8/255, steps: 2}
"""


def test_transfer_cells_use_the_source_and_spare_the_target(tmp_path):
    suite = tmp_path / "transfer.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    transfer = [r for r in rows if r["attack"] == "transfer"]
    assert [r["detector"] for r in transfer] == ["target"]  # no source → itself cell
    passes = transfer[0]["passes"]
    assert passes["gradient"] == 0 and passes["source_gradient"] == 16  # 8 images × 2 steps on the source
    assert 0 < transfer[0]["perturbation"]["linf_max"] <= 8 / 255 + 1e-6


def test_transfer_source_must_be_a_detector_label():
    raw = {"datasets": [{"name": "digits"}], "detectors": [{"name": "zarnd", "label": "z"}],
           "attacks": [{"name": "transfer", "source": "patchcore", "eps": 0.03}]}
    with pytest.raises(SuiteErrors, match=r"attacks\[0\].source.*detector labels: z"):
        parse_suite(raw, file="s.yaml")
