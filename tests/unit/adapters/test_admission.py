"""The admission check (``robustad-bench check-detector``) admits the four built-ins and
refuses three planted broken detectors, naming the check each breaks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustad_bench import check_detector
from robustad_bench.adapters import DETECTORS, AnomalyOutput, Detector, list_detectors
from robustad_bench.harness.cli import main


class Sound(Detector):
    """Distance to the normal images' mean: keeps the contract."""

    name, version, input_size = "sound", "1", 16

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 16, 16))

    def fit(self, normal_images, *, seed):
        self.mean.copy_(normal_images.mean(0, keepdim=True))

    def anomaly_map(self, x):
        return (x - self.mean).pow(2).sum(1)

    def forward(self, x):
        m = self.anomaly_map(x)
        return AnomalyOutput(m.flatten(1).amax(1), m)

    def features(self, x):
        return x


class NoGrad(Sound):
    def forward(self, x):
        with torch.no_grad():  # cuts the gradient every attack follows
            return super().forward(x)


class DeclaredScoreOnly(NoGrad):
    differentiable = False  # admitted score-only: the gradient check is n/a, the harness runs no gradient attack


class DropoutOn(Sound):
    def forward(self, x):
        m = F.dropout(self.anomaly_map(x), p=0.5)  # functional dropout: training=True whatever the mode
        return AnomalyOutput(m.flatten(1).amax(1), m)


class MixesBatch(Sound):
    def forward(self, x):
        m = self.anomaly_map(x)
        m = m - m.mean(0, keepdim=True)  # each image's score depends on the others in the batch
        return AnomalyOutput(m.flatten(1).amax(1), m)


def failed(model) -> set[str]:
    return {c.name for c in check_detector(model) if c.passed is False}


def test_a_sound_detector_passes_and_planted_bugs_fail_their_check():
    assert failed(Sound()) == set()
    assert failed(NoGrad()) == {"differentiable"}
    assert failed(DeclaredScoreOnly()) == set()
    assert {c.name: c.status for c in check_detector(DeclaredScoreOnly())}["differentiable"] == "n/a"
    assert "deterministic" in failed(DropoutOn())
    assert failed(MixesBatch()) == {"batch independent"}


def test_check_detector_cli_names_the_broken_check(capsys, monkeypatch):
    import sys
    import types

    module = types.ModuleType("planted_detectors")
    module.NoGrad, module.MixesBatch = NoGrad, MixesBatch
    monkeypatch.setitem(sys.modules, "planted_detectors", module)
    assert main(["check-detector", "planted_detectors:NoGrad"]) == 1
    captured = capsys.readouterr()
    assert "| differentiable        | FAIL" in captured.out and "no_grad" in captured.out
    assert "1 check(s) failed: differentiable" in captured.err
    assert main(["check-detector", "planted_detectors:MixesBatch"]) == 1
    assert "batch independent" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(list_detectors()))
def test_every_built_in_is_admitted(name, capsys):
    assert main(["check-detector", name]) == 0
    out = capsys.readouterr().out
    assert "every check passes" in out
    assert ("admitted score-only" in out) == (not DETECTORS.get(name).differentiable)
