"""The detector contract (DESIGN §5), checked for every registered detector.

Each detector runs in a tiny configuration (small input, random weights, a one-epoch
PatchGuard) so the whole file stays fast on a CPU; a newly registered detector must add
one here, or ``test_every_detector_has_a_tiny_config`` fails.
"""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import create_detector, list_detectors
from robustad_bench.adapters.knn import MemoryBank
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.evaluate import seeded

TINY = {
    "patchcore": {"backbone": "resnet18", "input_size": 64},
    "zarnd": {"backbone": "resnet18", "input_size": 64},
    "anomalydino": {"backbone": "vit_small_patch14_dinov2", "input_size": 56, "shots": 2},
    "patchguard": {"backbone": "vit_tiny_patch16_224", "input_size": 64, "epochs": 1, "batch_size": 8,
                   "train_steps": 1, "hidden_dim": 64},
}


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
    assert set(list_detectors()) == set(TINY)


def test_output_shapes_and_finite(fitted):
    _, detector, split = fitted
    x = split.test
    out = detector(x)
    assert out.score.shape == (4,) and out.map.shape == (4, *x.shape[-2:]) == (4, detector.input_size, detector.input_size)
    assert torch.isfinite(out.score).all() and torch.isfinite(out.map).all()


def test_gradient_wrt_input_is_finite_and_nonzero(fitted):
    _, detector, split = fitted
    x = split.test.clone().requires_grad_(True)
    out = detector(x)
    (out.score.sum() + out.map.mean()).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every image gets a gradient
    assert all(p.grad is None for p in detector.parameters())  # the fitted model stays frozen


def test_features_are_exposed_for_surrogate_heads(fitted):
    _, detector, split = fitted
    f = detector.features(split.test)
    assert f.shape[0] == 4 and f.dim() in (2, 4) and torch.isfinite(f).all()


def test_same_seed_same_scores(fitted):
    name, detector, split = fitted
    other = make(name)
    other.fit(split.train, seed=0)
    assert torch.equal(other(split.test).score, detector(split.test).score)


def test_state_dict_round_trip_gives_identical_scores(fitted):
    name, detector, split = fitted
    x = split.test
    fresh = make(name, init_seed=99)  # another random init: everything must come from the state
    fresh.load_state_dict(detector.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x).score, detector(x).score)
    assert torch.equal(fresh(x).map, detector(x).map)


def test_faiss_search_equals_torch_brute_force(fitted):
    _, detector, _ = fitted
    banks = [m for m in detector.modules() if isinstance(m, MemoryBank)]
    if not banks:
        pytest.skip("no memory bank: this detector does not search")
    bank = banks[0].bank
    queries = bank[:5] + 0.1 * torch.randn(5, bank.shape[1], generator=torch.Generator().manual_seed(0))
    k = min(3, bank.shape[0])
    brute = torch.cdist(queries, bank).topk(k, dim=1, largest=False).values
    assert torch.allclose(banks[0].distances(queries, k=k), brute, rtol=1e-4, atol=1e-4)


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
