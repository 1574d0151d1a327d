"""``robustad_bench.evaluate`` on a plain ``nn.Module``: the same metrics as the CLI on the
same data and seed, and tensors as data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustad_bench
from robustad_bench.adapters import create_detector
from robustad_bench.core.errors import UserError
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


class Mean(nn.Module):
    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.sign = sign  # a plain attribute: not in the state_dict, yet it changes every score
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.sign * self.w * x.mean((1, 2, 3))


class NaNScores(Mean):
    def forward(self, x):
        return x.mean((1, 2, 3)) * float("nan")


class Detached(Mean):
    def forward(self, x):
        return x.mean((1, 2, 3)).detach()


def api_data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 16, 16, generator=g), torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 0, 0, 1, 1, 1])


# (case, model, data → data, phrase)
API_CASES = [
    ("gray-images", Mean, lambda tr, te, y: (tr[:, 0], te, y), "(N, 3, H, W)"),
    ("uint8-images", Mean, lambda tr, te, y: ((tr * 255).to(torch.uint8), te, y), "divide by 255"),
    ("0-255-images", Mean, lambda tr, te, y: (tr, te * 255, y), "ranges over"),
    ("nan-images", Mean, lambda tr, te, y: (tr, te * float("nan"), y), "NaN"),
    ("string-labels", Mean, lambda tr, te, y: (tr, te, ["a"] * 6), "allowed: numbers"),
    ("out-of-range-labels", Mean, lambda tr, te, y: (tr, te, y * 2), "values 0 (normal) or 1"),
    ("masks-of-another-size", Mean, lambda tr, te, y: (tr, te, y, torch.zeros(6, 8, 8)), "(6, 16, 16)"),
    ("nan-scores", NaNScores, lambda tr, te, y: (tr, te, y), "non-finite scores"),
    ("no-gradient", Detached, lambda tr, te, y: (tr, te, y), "no gradient with respect to its input"),
]


@pytest.mark.parametrize("model, make, phrase", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_evaluate_refuses_bad_data_and_broken_models_with_a_message(model, make, phrase, tmp_path):
    with pytest.raises(UserError, match=re.escape(phrase)):
        robustad_bench.evaluate(model(), make(*api_data()), [{"name": "none"}, {"name": "pgd", "eps": "8/255", "steps": 2}],
                                cache=tmp_path / "cache")


def test_evaluate_takes_numpy_and_keys_plain_attributes_and_fits_before_scoring(tmp_path):
    train, test, labels = api_data()
    attacks = [{"name": "none"}]
    up = robustad_bench.evaluate(Mean(1.0), (train.numpy(), test.numpy(), labels.numpy()), attacks, cache=tmp_path / "c")
    down = robustad_bench.evaluate(Mean(-1.0), (train, test, labels), attacks, cache=tmp_path / "c")
    assert up["image_auroc"].iloc[0] == pytest.approx(1 - down["image_auroc"].iloc[0])  # not served the first's rows
    with torch.random.fork_rng():
        torch.manual_seed(0)
        patchcore = create_detector("patchcore", backbone="resnet18", input_size=16)  # an empty memory bank until fitted
    frame = robustad_bench.evaluate(patchcore, (train, test, labels), attacks, cache=tmp_path / "c")
    assert frame["status"].tolist() == ["ok"]
