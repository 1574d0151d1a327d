"""AnomalyDINO specifics: cosine kNN score, top-1 % rule, few-shot bank, rotation, masking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustad_bench.adapters import create_detector
from robustad_bench.adapters.anomalydino import foreground_mask, mean_top_fraction, rotate
from robustad_bench.core.errors import UserError
from robustad_bench.harness.tasks import seeded

SIZE = 56  # 4×4 patches of 14 px


def make(**kwargs):
    with seeded(0):
        return create_detector("anomalydino", input_size=SIZE, **kwargs).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, SIZE, SIZE, generator=g), torch.rand(3, 3, SIZE, SIZE, generator=g)


def test_score_is_cosine_distance_to_the_nearest_reference_patch(data):
    train, test = data
    det = make(shots=6)
    det.fit(train, seed=0)
    out = det(test)
    refs = F.normalize(det.tokens(train), dim=-1).flatten(0, 1)  # (6*16, C)
    queries = F.normalize(det.tokens(test), dim=-1)  # (3, 16, C)
    brute = 1 - (queries @ refs.T).amax(dim=-1)  # (3, 16) cosine distance to the nearest patch
    assert torch.allclose(out.score, brute.amax(dim=1), atol=1e-5)  # 16 patches: top 1 % = the max


def test_mean_top_fraction():
    values = torch.arange(200.0).view(1, 200)
    assert mean_top_fraction(values, 0.01).item() == pytest.approx(198.5)  # top 2 of 200
    assert mean_top_fraction(values[:, :50], 0.01).item() == 49  # fewer than 1 value: the max


def test_shots_are_drawn_with_the_seed(data):
    train, _ = data
    a, b = make(shots=2), make(shots=2)
    a.fit(train, seed=0)
    b.fit(train, seed=1)
    assert a.memory_bank.bank.shape[0] == 2 * 16
    assert not torch.equal(a.memory_bank.bank, b.memory_bank.bank)
    with pytest.raises(UserError, match="shots=9"):
        make(shots=9).fit(train, seed=0)


def test_rotation_augments_the_references_eight_times(data):
    det = make(shots=1, rotation=True)
    det.fit(data[0], seed=0)
    assert det.memory_bank.bank.shape[0] == 8 * 16
    square = torch.zeros(1, 1, 8, 8)
    square[..., :, 0] = 1  # left column
    # positive angles turn counter-clockwise, as cv2.getRotationMatrix2D does: left column → bottom row
    assert torch.allclose(rotate(square, 90)[0, 0, -1], torch.ones(8), atol=1e-5)


def test_masking_is_switched_per_category():
    det = make(masking=["capsule", "screw"])
    det.set_category("capsule")
    assert det.mask_foreground
    det.set_category("carpet")
    assert not det.mask_foreground


def test_foreground_mask_keeps_the_centre_and_flips_the_sign():
    h = w = 10
    direction = torch.zeros(8)
    direction[0] = 1
    centre = torch.zeros(h, w, dtype=torch.bool)
    centre[3:7, 3:7] = True
    tokens = torch.where(centre.flatten()[:, None], 30 * direction, -5 * direction).unsqueeze(0)  # (1, 100, 8)
    mask = foreground_mask(tokens, (h, w), threshold=10)[0]
    assert mask[3:7, 3:7].all() and not mask[0, 0]  # object kept, far background dropped
    flipped = foreground_mask(-tokens, (h, w), threshold=10)[0]  # PCA sign is arbitrary
    assert torch.equal(flipped, mask)


def test_masked_patches_score_zero(data):
    train, test = data
    det = make(masking=True, mask_threshold=1e9)  # nothing passes the threshold either way
    det.set_category("any")
    det.fit(train, seed=0)
    out = det(test)
    assert torch.all(out.score == 0)


def test_input_size_must_fit_the_patch_grid():
    with pytest.raises(UserError, match="multiple of the patch size 14.*224 or 238"):
        create_detector("anomalydino", input_size=230)


def test_bpda_keeps_the_exact_forward_and_gives_the_mask_a_gradient(data):
    """With ``straight_through`` the scores are the exact ones, and an image whose patches the
    mask removes gets a gradient (the exact one is zero there: nothing moves the mask)."""
    train, test = data
    det = make(shots=2, masking=True, mask_threshold=-1e9)  # every patch kept ...
    det.fit(train, seed=0)
    det.mask_threshold = 1e9  # ... then every patch masked out: the score is 0 whatever the image
    x = test.clone().requires_grad_(True)
    exact = det(x).score
    (grad,) = torch.autograd.grad(exact.sum(), x)
    assert torch.all(exact == 0) and torch.all(grad == 0)
    det.mask_threshold = 0.0
    plain = det(x).score
    (grad,) = torch.autograd.grad(plain.sum(), x)
    det.straight_through = True
    through = det(x).score
    (bpda_grad,) = torch.autograd.grad(through.sum(), x)
    assert torch.equal(plain, through)  # the defender's forward is untouched
    assert not torch.allclose(grad, bpda_grad)  # the mask's stand-in adds its part


@pytest.mark.slow
@pytest.mark.parametrize("category", ["brick", "grass"])
def test_masking_hides_the_gradient_and_bpda_breaks_the_unbounded_attack(category, data_dir):
    """AnomalyDINO with masking (tiny, embedded textures): unbounded PGD (ε = 1, 20 steps)
    stays at image AUROC 0.50 on the exact gradient — the mask cuts it — and reaches ≤ 0.05
    with ``bpda: true``, which restores the switch afterwards."""
    from sklearn.metrics import roc_auc_score

    from robustad_bench.harness.attacks import run_attack
    from robustad_bench.harness.datasets import DATASETS

    split = DATASETS.get("textures")(image_size=SIZE, crop_size=96, n_train=8, n_test_normal=8, n_test_anomalous=8).load(
        category, seed=0, data_dir=data_dir)
    det = make(backbone="vit_small_patch14_dinov2", shots=2, masking=True)
    det.fit(split.train, seed=0)
    labels = torch.from_numpy(split.labels)
    results = {}
    for bpda in (False, True):
        adv = run_attack("pgd", det, split.test, labels, eps=1.0, steps=20, bpda=bpda)
        with torch.no_grad():
            results[bpda] = roc_auc_score(split.labels, det(adv).score.numpy())
        assert det.straight_through is False
    assert results[False] >= 0.4 and results[True] <= 0.05, results


def test_an_images_bpda_attack_does_not_depend_on_its_batch(data):
    """The straight-through path is per image (the component, its side and the soft mask's
    width are each image's own): attacked whole, in pairs or reversed, every image ends with
    the same adversarial score."""
    from robustad_bench.harness.attacks import run_attack

    train, test = data
    det = make(shots=2, masking=True, mask_threshold=0.0)
    det.fit(train, seed=0)
    labels = torch.tensor([0, 1, 1])

    def attacked(order: list[int], size: int) -> dict[int, float]:
        scores = {}
        for start in range(0, len(order), size):
            part = order[start:start + size]
            adv = run_attack("pgd", det, test[part], labels[part], eps=8 / 255, steps=3, bpda=True, images=tuple(part),
                             threshold=0.5, pixel_threshold=0.5)
            with torch.no_grad():
                scores |= dict(zip(part, det(adv).score.tolist()))
        return scores

    whole = attacked([0, 1, 2], 3)
    for order, size in (([0, 1, 2], 1), ([2, 0, 1], 2)):
        assert attacked(order, size) == pytest.approx(whole, abs=1e-5)
