"""PatchCore specifics (the shared contract is in test_contract.py): score, coreset, weights."""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import create_detector
from robustad_bench.adapters.knn import MemoryBank, greedy_coreset
from robustad_bench.core.errors import UserError
from robustad_bench.harness.tasks import seeded

SIZE = 64


def make(seed=0, **kwargs):
    with seeded(seed):
        return create_detector("patchcore", backbone="resnet18", input_size=SIZE, **kwargs)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, SIZE, SIZE, generator=g), torch.rand(4, 3, SIZE, SIZE, generator=g)


@pytest.fixture(scope="module")
def fitted(images):
    det = make().eval()
    det.fit(images[0], seed=0)
    return det




def test_score_is_the_map_maximum(fitted, images):
    out = fitted(images[1])
    assert out.score.shape == (4,) and out.map.shape == (4, SIZE, SIZE)
    assert torch.isfinite(out.score).all() and torch.isfinite(out.map).all()
    assert torch.allclose(out.score, out.map.flatten(1).amax(1))  # score = max of the map










def test_coreset_is_greedy_k_center():
    g = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(50, 4, generator=g) * 0.01 + c for c in (0.0, 10.0, -10.0)])
    chosen = greedy_coreset(clusters, 3, seed=0, projection_dim=4)
    assert sorted(int(i) // 50 for i in chosen) == [0, 1, 2]  # one point per cluster


def test_memory_bank_round_trip_resizes():
    bank = MemoryBank()
    bank.set(torch.randn(7, 5))
    other = MemoryBank()
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.bank, bank.bank)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="resnet18"):
        create_detector("patchcore", backbone="resnet_18")
    with pytest.raises(UserError, match="layer4"):
        create_detector("patchcore", backbone="resnet18", layers=["layer9"])
    with pytest.raises(UserError, match="weights"):
        create_detector("patchcore", backbone="resnet18", weights="/no/such/file.pth")


def test_checkpoint_path_weights(tmp_path, images):
    src = make(seed=5)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.backbone.state_dict().items()}}, path)
    loaded = create_detector("patchcore", backbone="resnet18", input_size=SIZE, weights=str(path))
    assert loaded.weights == str(path)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v)
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="missing key"):
        create_detector("patchcore", backbone="resnet18", weights=str(tmp_path / "bad.pth"))


def test_timm_weights_offline_names_the_file_to_provide(monkeypatch):
    import timm

    real = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("network is unreachable")
        return real(*args, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match=r"weights: /path/to/resnet18"):
        create_detector("patchcore", backbone="resnet18", weights="timm")


def test_bf16_runs_the_network_in_bf16_and_the_distances_in_fp32(fitted, images):
    detector = make(precision="bf16").eval()
    detector.load_state_dict(fitted.state_dict())
    with torch.no_grad():
        out, reference = detector(images[1]), fitted(images[1])
        features = detector.features(images[1])
    assert out.score.dtype == torch.float32 and features.dtype == torch.float32
    assert not torch.equal(out.score, reference.score)  # bf16 did run
    assert torch.allclose(out.score, reference.score, rtol=0.05)
