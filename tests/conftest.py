"""Shared fixtures: a tiny suite on the embedded data that runs in seconds on a CPU."""

from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path

import pytest

TINY_SUITE = """
name: tiny
seed: 0
batch_size: 8
map_size: 16
datasets:
  - {name: textures, categories: [brick, grass], image_size: 64, crop_size: 96, n_train: 6, n_test_normal: 4, n_test_anomalous: 4}
  - {name: digits, categories: ["1"], image_size: 32, n_train: 10, n_test_normal: 6, n_test_anomalous: 6}
detectors:
  - {name: patchcore, label: pc, backbone: resnet18, weights: random, input_size: 64, blur_sigma: 1.0}
attacks:
  - {name: none}
  - {name: pgd, norm: linf, eps: [8/255], steps: 2}
  - {name: fgsm, label: fgsm-al, eps: 8/255, objective: localization}
"""


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_SUITE))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Generated embedded data, shared by the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def fit_on_textures(data_dir):
    """``fit(name, n_train=8, n_test=6, **detector_kwargs)``: a detector fitted on the embedded
    textures' brick at 64 px, as (detector in eval mode, split)."""
    return partial(_fit_on_textures, data_dir=data_dir)


def _fit_on_textures(name: str, *, data_dir: Path, n_train: int = 8, n_test: int = 6, **detector_kwargs):
    from robustad_bench.adapters import create_detector
    from robustad_bench.harness.datasets import DATASETS
    from robustad_bench.harness.tasks import seeded

    dataset = DATASETS.get("textures")(image_size=64, crop_size=96, n_train=n_train, n_test_normal=n_test, n_test_anomalous=n_test)
    split = dataset.load("brick", seed=0, data_dir=data_dir)
    with seeded(0):
        detector = create_detector(name, **detector_kwargs)
    detector.fit(split.train, seed=0)
    return detector.eval(), split


@pytest.fixture
def masked_detector():
    """A deliberately gradient-masked detector, registered for one test.

    PatchCore behind a quantised input stage: ``round(x·levels)/levels`` has zero gradient
    almost everywhere, so every white-box attack sees a zero gradient while the score still
    depends on the image. The validity checks must not let it pass as robust.
    """
    import torch

    from robustad_bench.adapters import (
        DETECTORS,
        AnomalyOutput,
        Detector,
        create_detector,
        register_detector,
    )

    class QuantisedPatchCore(Detector):
        name, version = "test_quantised_patchcore", "1"

        def __init__(self, levels: int = 16, input_size: int = 64):
            super().__init__()
            self.levels, self.input_size = levels, input_size
            self.inner = create_detector("patchcore", backbone="resnet18", input_size=input_size, blur_sigma=1.0)

        def fit(self, normal_images, *, seed):
            self.inner.fit(normal_images, seed=seed)

        def forward(self, x):
            out = self.inner(torch.round(x * self.levels) / self.levels)
            return AnomalyOutput(out.score, out.map)

        def features(self, x):
            return self.inner.features(x)

    register_detector(QuantisedPatchCore.name)(QuantisedPatchCore)
    yield QuantisedPatchCore.name
    DETECTORS.unregister(QuantisedPatchCore.name)


@pytest.fixture
def toy_attack():
    """Registers ``test_toy`` (an attack written in a test file) for one test."""
    from robustad_bench.harness.attacks import ATTACKS, register_attack

    def register(run, **metadata):
        register_attack("test_toy", **metadata)(run)

    yield register
    if "test_toy" in ATTACKS:
        ATTACKS.unregister("test_toy")
