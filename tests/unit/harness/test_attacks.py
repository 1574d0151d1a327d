"""Attacks against known answers, and the threat-model invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustad_bench.adapters import AnomalyOutput
from robustad_bench.harness.attacks import ATTACKS
from robustad_bench.harness.attacks.base import objective_loss, project


class Linear(nn.Module):
    """score = <w, x>, map = w ⊙ x summed over channels: gradients known in closed form."""

    def __init__(self, shape=(3, 8, 8), seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), requires_grad=False)

    def forward(self, x):
        m = (x * self.w).sum(1)
        return AnomalyOutput(score=m.flatten(1).sum(1), map=m)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=g) * 0.8 + 0.1  # away from the box edges
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    masks = torch.zeros(6, 8, 8)
    masks[3:, 2:6, 2:6] = 1
    return x, labels, masks


def test_fgsm_linf_known_answer(batch):
    x, labels, masks = batch
    det, eps = Linear(), 4 / 255
    adv = ATTACKS.get("fgsm")(det, x, labels, masks, eps=eps)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()  # normals up, anomalies down
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)


def test_pgd_linf_moves_to_the_corner_of_the_ball(batch):
    x, labels, masks = batch
    det, eps = Linear(), 8 / 255
    adv = ATTACKS.get("pgd")(det, x, labels, masks, eps=eps, steps=5, random_start=False)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)  # α·steps = 2.5 ε ≥ ε


def test_pgd_l2_follows_the_gradient_direction(batch):
    x, labels, masks = batch
    det, eps = Linear(), 0.5
    adv = ATTACKS.get("pgd")(det, x, labels, masks, eps=eps, norm="l2", steps=3, random_start=False)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    expected = x + eps * y * det.w / det.w.norm()
    assert torch.allclose(adv, expected, atol=1e-5)


def test_localization_objective_uses_the_mask(batch):
    x, labels, masks = batch
    det, eps = Linear(), 4 / 255
    adv = ATTACKS.get("fgsm")(det, x, labels, masks, eps=eps, objective="localization")
    sign = (1 - 2 * masks).unsqueeze(1)  # +1 normal pixel, −1 anomalous pixel
    assert torch.allclose(adv, x + eps * sign * det.w.sign(), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_attacks_stay_in_the_ball_and_the_box(name, norm):
    g = torch.Generator().manual_seed(3)
    for trial in range(5):
        x = torch.rand(4, 3, 8, 8, generator=g)
        x[0] = 0.0
        x[1] = 1.0  # images on the box edges
        labels = torch.tensor([0, 1, 0, 1])
        eps = float(torch.rand(1, generator=g)) * (0.1 if norm == "linf" else 2.0)
        kwargs = {"steps": 4, "seed": trial} if name == "pgd" else {}
        adv = ATTACKS.get(name)(Linear(seed=trial), x, labels, None, eps=eps, norm=norm, **kwargs)
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps + 1e-5).all()
        assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_raises_the_objective_over_clean(batch):
    x, labels, masks = batch
    det = Linear()
    adv = ATTACKS.get("pgd")(det, x, labels, masks, eps=2 / 255, steps=3, seed=0)
    assert (objective_loss(det, adv, labels, masks, "detection") > objective_loss(det, x, labels, masks, "detection")).all()


def test_restarts_keep_the_best_per_image(batch):
    x, labels, masks = batch
    det = Linear()
    one = ATTACKS.get("pgd")(det, x, labels, masks, eps=2 / 255, steps=1, step_size=1e-4, seed=0)
    many = ATTACKS.get("pgd")(det, x, labels, masks, eps=2 / 255, steps=1, step_size=1e-4, restarts=4, seed=0)
    loss = lambda a: objective_loss(det, a, labels, masks, "detection")  # noqa: E731
    assert (loss(many) >= loss(one) - 1e-6).all()


def test_none_returns_the_same_tensor(batch):
    x, labels, masks = batch
    assert ATTACKS.get("none")(Linear(), x, labels, masks) is x


def test_project_l2_shrinks_only_outside():
    x = torch.zeros(2, 3, 4, 4) + 0.5
    inside = x + 0.01
    assert torch.allclose(project(inside, x, 1.0, "l2"), inside)
    far = x + 0.4
    assert (project(far, x, 0.5, "l2") - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6


def test_localization_objective_is_balanced_per_image():
    class Fixed(nn.Module):
        def forward(self, x):
            m = torch.zeros(2, 4, 4)
            m[:, :2] = 1.0  # top half = 1, bottom half = 0
            return AnomalyOutput(score=m.flatten(1).amax(1), map=m)

    masks = torch.zeros(2, 4, 4)
    masks[1, 0, 0] = 1  # image 1: one anomalous pixel, with map value 1
    loss = objective_loss(Fixed(), torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), masks, "localization")
    # image 0: mean over 16 normal pixels = 0.5; image 1: normal mean 7/15, anomalous mean 1
    assert torch.allclose(loss, torch.tensor([0.5, 7 / 15 - 1.0]))
