"""PatchGuard specifics: patch labels, the attention-degree regulariser, pseudo-anomalies,
adversarial training examples."""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import create_detector
from robustad_bench.adapters.base import Normalize
from robustad_bench.adapters.patchguard import (
    attention_degree_penalty,
    attention_probs,
    patch_labels,
)
from robustad_bench.adapters.pseudo_anomaly import (
    foreground_saliency,
    grad_cam,
    pseudo_anomalies,
    rotated_rectangles,
)
from robustad_bench.harness.tasks import seeded

SIZE = 64


@pytest.fixture(scope="module")
def detector():
    with seeded(0):
        return create_detector("patchguard", backbone="vit_tiny_patch16_224", input_size=SIZE, hidden_dim=64).eval()


def test_patch_label_needs_more_than_five_percent():
    masks = torch.zeros(1, 20, 40)
    masks[0, :1, :20] = 1  # 20 of 400 pixels = 5 % of the left patch: not anomalous
    masks[0, :2, 20:] = 1  # 40 of 400 = 10 % of the right patch: anomalous
    assert patch_labels(masks, 20).tolist() == [[0.0, 1.0]]


def test_attention_degree_penalty_known_answers():
    heads, n = 3, 16
    uniform = torch.full((2, heads, n, n), 1 / n)  # every weight = δ: all of it counts
    assert torch.allclose(attention_degree_penalty([uniform], 1 / n), torch.full((2,), 1 / (heads * n)))
    peaked = torch.eye(n).expand(2, heads, n, n)  # each token attends to itself only: nothing ≤ δ but zeros
    assert (attention_degree_penalty([peaked], 1 / n) > 1e7).all()


def test_attention_probs_reproduce_the_vit_attention(detector):
    block = detector.vit.blocks[0]
    x = torch.randn(2, 5, detector.vit.embed_dim)
    probs = attention_probs(block.attn, x, prefix=0)  # (B, heads, N, N)
    v = block.attn.qkv(x).reshape(2, 5, 3, block.attn.num_heads, -1)[:, :, 2].transpose(1, 2)
    ours = block.attn.proj((probs @ v).transpose(1, 2).reshape(2, 5, -1))
    assert torch.allclose(probs.sum(-1), torch.ones(2, block.attn.num_heads, 5), atol=1e-5)
    assert torch.allclose(ours, block.attn(x), atol=1e-5)


def test_rectangles_follow_the_saliency_and_the_size_law():
    g = torch.Generator().manual_seed(0)
    saliency = torch.zeros(50, 64, 64)
    saliency[:, 10, 50] = 1  # all saliency at one pixel: every anchor lands there
    masks = rotated_rectangles(saliency, g)
    assert (masks[:, 10, 50] == 1).all()
    area = masks.flatten(1).mean(1)
    # w, h ∈ [0.05, 0.3]·size before clipping at the border; rotation keeps the area
    assert (area <= 0.3 * 0.3 + 0.02).all() and (area > 0).all()


def test_pseudo_anomalies_change_only_pixels_inside_the_mask():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, SIZE, SIZE, generator=g)
    anomalous, masks = pseudo_anomalies(x, torch.ones(4, SIZE, SIZE), g, k_hard=2)
    outside = (1 - masks).unsqueeze(1).bool().expand_as(x)
    assert torch.equal(anomalous[outside], x[outside])
    assert masks.sum() > 0 and not torch.equal(anomalous, x)


def test_grad_cam_saliency_is_a_normalised_map():
    import timm

    with seeded(0):
        cnn = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    cam = grad_cam(cnn, Normalize(), x)
    assert cam.shape == (2, SIZE, SIZE) and cam.min() >= 0 and cam.max() <= 1
    g = foreground_saliency(cnn, Normalize(), x, torch.Generator().manual_seed(0), k_soft=3)
    assert g.shape == (2, SIZE, SIZE) and (g <= cam + 1e-6).all()  # a product of maps in [0,1]


def test_adversarial_training_examples_stay_in_budget_and_raise_the_loss(detector):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(2, detector.num_patches)
    with torch.enable_grad():
        detector.requires_grad_(False)
        x_adv = detector.adversarial_examples(x, labels)
    assert (x_adv - x).abs().max() <= detector.train_eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (detector.loss(x_adv, labels) > detector.loss(x, labels)).all()


@pytest.mark.parametrize("adversarial", [False, True])
def test_a_joint_step_is_the_split_steps_objective_and_update(adversarial):
    """``joint_batches`` trains on the same loss: without dropout (the one draw that differs)
    one step from the same state, on the same pseudo-anomalies, gives the same loss and the
    same gradient (SGD at lr 1: the update is the gradient), up to the rounding of larger batches."""
    loss, update = {}, {}
    for joint in (False, True):
        with seeded(0):
            model = create_detector("patchguard", backbone="vit_tiny_patch16_224", input_size=SIZE, hidden_dim=64,
                                    dropout=0.0, adversarial=adversarial, train_steps=2, joint_batches=joint)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.requires_grad_(True).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        normal = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
        loss[joint] = float(model._train_step(normal, torch.ones(3, SIZE, SIZE), torch.Generator().manual_seed(6), optimizer))
        update[joint] = {k: v - before[k] for k, v in model.state_dict().items() if v.is_floating_point()}
    assert loss[True] == pytest.approx(loss[False], rel=1e-5)
    assert any(u.abs().max() > 1e-3 for u in update[False].values())  # the step moved the weights
    for key, expected in update[False].items():
        assert torch.allclose(update[True][key], expected, rtol=1e-3, atol=1e-5), key
