"""``robustad_bench.evaluate`` on a plain ``nn.Module``: the same metrics as the CLI on the
same data and seed, and tensors as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustad_bench
from robustad_bench.harness.cli import main

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"
DATA = {"name": "textures", "categories": ["brick"], "image_size": 32, "crop_size": 48, "n_train": 6,
        "n_test_normal": 4, "n_test_anomalous": 4}
ATTACKS = [{"name": "none"}, {"name": "pgd", "eps": "8/255", "steps": 3}]


class Plain(nn.Module):
    """Not a Detector: a module with fit() and a (score, map) forward — the example plugin's computation."""

    input_size = 32

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 32, 32))

    def fit(self, normal_images, *, seed):
        self.mean.copy_(normal_images.mean(0, keepdim=True))

    def forward(self, x):
        distance = (x - self.mean).pow(2).sum(1, keepdim=True)
        anomaly_map = F.avg_pool2d(distance, 3, stride=1, padding=1)[:, 0]
        return anomaly_map.flatten(1).amax(1), anomaly_map


def test_evaluate_matches_the_cli(tmp_path, monkeypatch, capsys):
    frame = robustad_bench.evaluate(Plain(), DATA, ATTACKS, out=tmp_path / "api", cache=tmp_path / "cache", seed=0)
    assert len(frame) == 2 and set(frame["attack"]) == {"none", "pgd"} and "image_auroc" in frame
    monkeypatch.syspath_prepend(str(PLUGIN))
    suite = tmp_path / "s.yaml"
    data = json.dumps(DATA)
    suite.write_text(f"name: s\nseed: 0\nbatch_size: 16\ndatasets: [{data}]\n"
                     "detectors: [{name: 'robustad_example_plugin.detector:MeanColour', input_size: 32}]\n"
                     f"attacks: {json.dumps(ATTACKS)}\n")
    assert main(["run", str(suite), "--out", str(tmp_path / "cli"), "--cache", str(tmp_path / "cache2"), "--no-progress"]) == 0
    cli = {r["attack"]: r["metrics"] for r in map(json.loads, (tmp_path / "cli" / "results.jsonl").read_text().splitlines())}
    for _, row in frame.iterrows():
        for metric in ("image_auroc", "pixel_auroc", "aupro", "f1", "ece_platt"):
            assert row[metric] == pytest.approx(cli[row["attack"]][metric], abs=1e-6), (row["attack"], metric)


def test_evaluate_takes_tensors_and_a_score_only_module(tmp_path):
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(6, 3, 16, 16, generator=generator) * 0.5
    test = torch.cat([torch.rand(3, 3, 16, 16, generator=generator) * 0.5, 0.5 + torch.rand(3, 3, 16, 16, generator=generator) * 0.5])
    labels = [0, 0, 0, 1, 1, 1]

    class Brightness(nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3))  # a score only: no map, no localization

    frame = robustad_bench.evaluate(Brightness(), (train, test, labels), [{"name": "none"}, {"name": "fgsm", "eps": 0.3}],
                                    cache=tmp_path / "cache", input_size=16)
    clean = frame[frame["attack"] == "none"].iloc[0]
    attacked = frame[frame["attack"] == "fgsm"].iloc[0]
    assert clean["image_auroc"] == 1.0 and attacked["image_auroc"] < 0.5 and clean["pixel_evaluation"] is None
