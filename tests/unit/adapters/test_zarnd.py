"""ZARND specifics: k=2 L2 score, no localization, robustness-library checkpoints."""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import create_detector
from robustad_bench.core.errors import UserError
from robustad_bench.harness.tasks import seeded

SIZE = 64


def make(**kwargs):
    with seeded(0):
        return create_detector("zarnd", backbone="resnet18", input_size=SIZE, **kwargs).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, SIZE, SIZE, generator=g), torch.rand(3, 3, SIZE, SIZE, generator=g)


def test_score_is_the_sum_of_the_two_nearest_l2_distances(data):
    train, test = data
    det = make()
    det.fit(train, seed=0)
    out = det(test)
    brute = torch.cdist(det.features(test), det.features(train)).topk(2, largest=False).values.sum(1)
    assert torch.allclose(out.score, brute, rtol=1e-4)
    assert not det.localization  # the map is the score broadcast
    assert torch.equal(out.map, out.score[:, None, None].expand_as(out.map))


def test_code_variant_normalises_features(data):
    det = make(normalize_features=True)
    assert torch.allclose(det.features(data[1]).norm(dim=1), torch.ones(3), atol=1e-5)


def robustness_checkpoint(model: torch.nn.Module) -> dict:
    """What the robustness library saves: the net twice (model., attacker.model.) + normaliser."""
    state = {}
    for k, v in model.state_dict().items():
        state[f"module.model.{k}"] = v
        state[f"module.attacker.model.{k}"] = v.clone()
    state["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    state["module.attacker.normalizer.new_std"] = torch.ones(3, 1, 1)
    return {"model": state, "epoch": 89}


def test_robustness_library_checkpoint_maps_onto_timm(tmp_path, data):
    import timm

    with seeded(7):
        source = timm.create_model("resnet18", pretrained=False).eval()  # with its fc head, as saved
    path = tmp_path / "resnet18_linf_eps2.0.ckpt"
    torch.save(robustness_checkpoint(source), path)
    det = create_detector("zarnd", backbone="resnet18", input_size=SIZE, weights=str(path))
    assert det.weights == str(path)
    expected = source.forward_head(source.forward_features(det.normalize(data[1])), pre_logits=True)
    assert torch.allclose(det.features(data[1]), expected, atol=1e-5)


def test_mismatched_checkpoint_names_the_file(tmp_path):
    import timm

    path = tmp_path / "resnet50_linf_eps4.0.ckpt"
    torch.save(robustness_checkpoint(timm.create_model("resnet50", pretrained=False)), path)
    with pytest.raises(UserError, match=r"resnet50_linf_eps4.0.ckpt.*wrong shapes"):
        create_detector("zarnd", backbone="resnet18", weights=str(path))


def test_needs_k_train_images():
    det = make(k=2)
    with pytest.raises(UserError, match="at least k=2"):
        det.fit(torch.rand(1, 3, SIZE, SIZE), seed=0)


def test_robustness_weights_by_name_download_once(tmp_path, monkeypatch):
    import timm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(url, dst, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"madrylab/robust-imagenet-models/resolve/main/resnet18_linf_eps2.0.ckpt.*checkpoints/resnet18_linf_eps2.0.ckpt"):
        create_detector("zarnd", backbone="resnet18", weights="robustness:resnet18_linf_eps2.0")
    # the file the message names, once there, is used without a download
    torch.save(robustness_checkpoint(timm.create_model("resnet18", pretrained=False)), tmp_path / "checkpoints" / "resnet18_linf_eps2.0.ckpt")
    det = create_detector("zarnd", backbone="resnet18", weights="robustness:resnet18_linf_eps2.0")
    assert det.weights == "robustness:resnet18_linf_eps2.0"
    with pytest.raises(UserError, match="Did you mean 'robustness:resnet18_linf_eps2.0'"):
        create_detector("zarnd", weights="robustness:resnet18_linf_eps2")


def test_robustness_checkpoints_are_checked_against_their_recorded_sha256(tmp_path, monkeypatch):
    import timm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = tmp_path / "checkpoints" / "resnet18_linf_eps2.0.ckpt"
    path.parent.mkdir()
    torch.save(robustness_checkpoint(timm.create_model("resnet18", pretrained=False)), path)
    create_detector("zarnd", backbone="resnet18", weights="robustness:resnet18_linf_eps2.0")  # first use: recorded
    recorded = (tmp_path / "checkpoints" / "resnet18_linf_eps2.0.ckpt.sha256").read_text().strip()
    torch.save(robustness_checkpoint(timm.create_model("resnet18", pretrained=False)), path)  # replaced
    with pytest.raises(UserError, match=rf"resnet18_linf_eps2.0.ckpt.*expected sha256 {recorded}, got [0-9a-f]{{64}}"):
        create_detector("zarnd", backbone="resnet18", weights="robustness:resnet18_linf_eps2.0")
