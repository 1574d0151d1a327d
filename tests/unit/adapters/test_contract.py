"""The detector contract (DESIGN §5), checked for every registered detector.

Shapes, finiteness, input gradients, determinism, eval mode, batch independence, the
state_dict round trip and exact search are the admission check's (``harness/admission.py``,
run over the registry by ``test_admission.py``): one definition. What is left here needs the
embedded textures or a GPU.

Each detector runs in a tiny configuration (small input, random weights, a one-epoch
PatchGuard) so the whole file stays fast on a CPU; a newly registered detector must set
its ``tiny`` class attribute, or ``test_every_detector_has_a_tiny_config`` fails.
"""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import DETECTORS, create_detector, list_detectors
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.tasks import seeded

TINY = {name: DETECTORS.get(name).tiny for name in list_detectors()}  # each detector registers its own


def make(name: str, init_seed: int = 0):
    with seeded(init_seed):
        detector = create_detector(name, **TINY[name])
    detector.set_category("brick")
    return detector.eval()


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def embedded(data_dir):
    """A tiny split of the embedded textures: 8 normal train crops, 2 normal + 2 anomalous test."""
    dataset = DATASETS.get("textures")(image_size=64, crop_size=96, n_train=8, n_test_normal=2, n_test_anomalous=2)
    return dataset.load("brick", seed=0, data_dir=data_dir)


@pytest.fixture(scope="module", params=sorted(TINY))
def fitted(request, embedded):
    name = request.param
    detector = make(name)
    split = embedded.resized(detector.input_size)
    detector.fit(split.train, seed=0)  # on CPU, in seconds, for every detector
    return name, detector, split


def test_every_detector_has_a_tiny_config():
    assert all(TINY.values()), [name for name, config in TINY.items() if not config]


def test_features_are_exposed_for_surrogate_heads(fitted):
    _, detector, split = fitted
    f = detector.features(split.test)
    assert f.shape[0] == 4 and f.dim() in (2, 4) and torch.isfinite(f).all()


def test_same_seed_same_scores(fitted):
    name, detector, split = fitted
    other = make(name)
    other.fit(split.train, seed=0)
    assert torch.equal(other(split.test).score, detector(split.test).score)


def test_provenance_is_labelled(fitted):
    _, detector, _ = fitted
    assert "random" in detector.weights  # random init is never shown as pretrained


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(TINY))
def test_cuda_path_matches_cpu(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare fp32 with fp32
    cpu = make(name)
    size = cpu.input_size
    train, x = images(8, size, 0), images(4, size, 1)
    cpu.fit(train, seed=0)
    gpu = make(name).cuda()
    gpu.load_state_dict(cpu.state_dict())
    gpu.eval()
    xg = x.cuda().requires_grad_(True)
    out = gpu(xg)
    assert torch.allclose(out.score.detach().cpu(), cpu(x).score.detach(), rtol=1e-3, atol=1e-4)
    (grad,) = torch.autograd.grad(out.score.sum(), xg)
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()
    fitted_on_gpu = make(name).cuda()
    fitted_on_gpu.fit(train.cuda(), seed=0)  # fit (PatchGuard's training too) runs on the GPU
    assert torch.isfinite(fitted_on_gpu(x.cuda()).score).all()
