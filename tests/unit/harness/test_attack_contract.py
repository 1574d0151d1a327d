"""The attack contract the harness guarantees, over the whole attack registry: an image's
adversarial score does not depend on its batch, attacks leave the detector in eval mode,
anything fitted for an attack is fitted once per cell, and adding an attack is one file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustad_bench.adapters import AnomalyOutput, Detector, create_detector
from robustad_bench.harness.attacks import ATTACKS, run_attack
from robustad_bench.harness.attacks.apgd import halving
from robustad_bench.harness.datasets import Split
from robustad_bench.harness.grid import Cell, resolve_attack
from robustad_bench.harness.suite import Entry
from robustad_bench.harness.tasks import (
    Fitted,
    clean_thresholds,
    evaluate_cell,
    evaluation_maps,
    evaluation_masks,
    score_images,
    seeded,
)

EPS = 8 / 255
ATTACKED = sorted(name for name in ATTACKS.names() if ATTACKS.get(name).perturbs)


class TinyDetector(Detector):
    """conv → ReLU → 1×1 conv map; score = mean of the 4 largest map values. Nonlinear,
    per image, with features for surrogate heads."""

    name, version, input_size = "tiny", "1", 12

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 1, 1)
        for p in self.parameters():
            p.requires_grad_(False)
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def fit(self, normal_images, *, seed):
        pass

    def features(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x):
        m = self.head(self.features(x))[:, 0]  # (B, H, W)
        return AnomalyOutput(score=m.flatten(1).topk(4, dim=1).values.mean(1), map=m)


def tiny_kwargs(name: str) -> dict:
    """The attack's own tiny configuration at ε = EPS; a transfer attack crafts on the source ``src``."""
    spec = ATTACKS.get(name)
    return {"eps": EPS, **spec.tiny, **({"source": "src"} if spec.kind == "transfer" else {})}


def tiny_split(n: int = 7) -> Split:
    g = torch.Generator().manual_seed(5)
    test = torch.rand(n, 3, 12, 12, generator=g)
    labels = np.array([0, 1] * (n // 2) + [0] * (n % 2))
    masks = torch.zeros(n, 12, 12)
    masks[labels == 1, 3:7, 4:9] = 1
    return Split(torch.rand(6, 3, 12, 12, generator=g), test, labels, masks, [f"img{i:02d}" for i in range(n)])


def permuted(split: Split, order: list[int]) -> Split:
    return Split(split.train, split.test[order], split.labels[order], split.masks[order], [split.names[i] for i in order])


def evaluate(name: str, split: Split, batch_size: int, detector: nn.Module | None = None) -> tuple[dict, dict]:
    """One cell through the harness's own evaluation path: (row fields, arrays)."""
    detector = detector or TinyDetector()
    kwargs = tiny_kwargs(name)
    attack = resolve_attack(Entry(name, name), kwargs)
    source = Entry("tiny", "src") if ATTACKS.get(name).kind == "transfer" else None
    cell = Cell("t", 0, Entry("tiny", "tiny"), Entry("d", "d"), "c", attack, batch_size, 12, source)
    scores, maps = score_images(detector, split.test, batch_size=batch_size, device="cpu")
    maps, masks = evaluation_maps(maps, 12), evaluation_masks(split.masks, 12)
    fitted = Fitted(detector, split, scores, maps, masks, 0.0, 12)
    thresholds = clean_thresholds(split.labels, scores, maps, masks)
    return evaluate_cell(cell, fitted, thresholds=thresholds, device="cpu", source=TinyDetector(seed=1) if source else None)


@pytest.mark.parametrize("name", ATTACKED)
def test_an_images_adversarial_score_does_not_depend_on_its_batch(name):
    assert_batch_invariant(name)


def test_a_new_attack_is_checked_from_its_registration_alone(toy_attack):
    """One function with its metadata and tiny configuration: no test dict to edit."""
    def steps_of_sign(objective, x, threat, context):
        x_adv = threat.start(x, context.random(x.device))
        for _ in range(threat.steps):
            _, grad = objective.gradient(x_adv)
            x_adv = threat.project(x_adv + threat.alpha * threat.ascent(grad), x)
        return x_adv

    toy_attack(steps_of_sign, kind="gradient", iterative=True, tiny={"steps": 2},
               threat={"norm": "linf", "eps": 0.0, "steps": 50, "step_size": None, "random_start": True})
    assert ATTACKS.get("test_toy").tiny == {"steps": 2}
    assert_batch_invariant("test_toy")


def assert_batch_invariant(name: str) -> None:
    split = tiny_split()
    fields, reference = evaluate(name, split, batch_size=len(split.names))
    assert fields["perturbation"]["linf_max"] > 0  # the attack did perturb
    assert sum(fields["passes"].values()) > 0 or ATTACKS.get(name).kind == "noise"  # and its passes are recorded
    by_name = dict(zip(split.names, reference["scores"]))
    order = [4, 0, 6, 2, 5, 1, 3]
    for batch_size, data in ((1, split), (3, split), (3, permuted(split, order)), (2, permuted(split, order[::-1]))):
        arrays = evaluate(name, data, batch_size)[1]
        for image, score in zip(data.names, arrays["scores"]):
            assert score == pytest.approx(by_name[image], abs=1e-5), (name, batch_size, image)


@pytest.fixture(scope="module")
def patchguard():
    with seeded(0):  # random init, not fitted: attacks only need forward and backward
        detector = create_detector("patchguard", backbone="vit_tiny_patch16_224", input_size=32, hidden_dim=32)
    return detector.eval()


@pytest.mark.parametrize("name", ATTACKED)
def test_attacks_leave_every_module_in_eval_mode(name, patchguard):
    g = torch.Generator().manual_seed(0)
    x, labels = torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 0, 1])
    masks = torch.zeros(4, 32, 32)
    masks[1::2, 8:16, 8:16] = 1
    kwargs = tiny_kwargs(name)
    run_attack(name, patchguard, x, labels, masks, source_detector=patchguard, **kwargs)
    assert [n for n, m in patchguard.named_modules() if m.training] == []
    with torch.no_grad():
        assert torch.equal(patchguard(x).score, patchguard(x).score)  # dropout is off


def test_the_harness_restores_eval_mode_and_fails_the_cell(toy_attack):
    def careless(objective, x, threat, context):
        objective.detector.train()  # e.g. a library that restores its wrapper's training flag
        return x + 0.0

    toy_attack(careless, kind="gradient", threat={"norm": "linf", "eps": 0.0})
    detector = TinyDetector()
    with pytest.raises(RuntimeError, match="training mode"):
        evaluate("test_toy", tiny_split(), 4, detector)
    assert not any(m.training for m in detector.modules())


def test_the_surrogate_head_is_fitted_once_on_the_whole_labelled_test_set():
    from robustad_bench.harness.attacks.surrogate import batched_features, fit_head

    split, detector = tiny_split(), TinyDetector()
    arrays = evaluate("surrogate", split, 2, detector)[1]  # batches of 2 hold one or two classes
    features = batched_features(detector, split.test, 7, "cpu")
    w, b = fit_head(features, torch.from_numpy(split.labels).float(), steps=20, lr=0.05, seed=0)
    assert np.allclose(arrays["attack_head_weight"], w.numpy(), atol=1e-5)
    assert np.allclose(arrays["attack_head_bias"], b.numpy(), atol=1e-5)


def test_segpgd_splits_pixels_at_the_pixel_threshold():
    split = tiny_split()
    fields, _ = evaluate("segpgd", split, 7)
    scores = TinyDetector()(split.test)
    maps, masks = evaluation_maps(scores.map.detach(), 12), evaluation_masks(split.masks, 12)
    assert fields["attack_thresholds"]["pixel"] == pytest.approx(clean_thresholds(split.labels, scores.score.detach().numpy(), maps, masks).pixel)
    x, labels, masks_t = split.test, torch.from_numpy(split.labels), split.masks
    common = {"eps": EPS, "steps": 1, "random_start": False}
    # step 1 weighs only correctly scored pixels; on normal images, none is when t is below every map value
    stuck = run_attack("segpgd", TinyDetector(), x[labels == 0], labels[labels == 0], masks_t[labels == 0], pixel_threshold=-1e9, **common)
    moved = run_attack("segpgd", TinyDetector(), x[labels == 0], labels[labels == 0], masks_t[labels == 0], pixel_threshold=1e9, **common)
    assert torch.equal(stuck, x[labels == 0]) and not torch.equal(moved, x[labels == 0])


def test_clean_thresholds_are_f1_max_on_scores_and_on_pixels():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.9])
    maps = np.zeros((4, 2, 2), dtype=np.float32)
    masks = np.zeros((4, 2, 2), dtype=np.float32)
    masks[2:, 0, 0] = 1
    maps[2:, 0, 0] = 7.0  # anomalous pixels at 7, normal pixels at 0: any threshold in (0, 7]
    t = clean_thresholds(labels, scores, maps, masks)
    assert t.metric == t.image == pytest.approx(0.35) and t.pixel == pytest.approx(7.0)
    single = clean_thresholds(np.zeros(4, dtype=int), scores, maps, None)
    assert single.metric is None and single.image == pytest.approx(np.median(scores)) and single.pixel is None


def test_apgd_halves_on_the_official_conditions():
    period = 20
    best_before, best = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 2.0, 1.0])
    increases = torch.tensor([15.0, 16.0, 16.0, 16.0])  # 15 = 0.75 · 20: still "oscillating" (≤)
    reduced = torch.tensor([False, True, False, False])
    # image 0: ≤ ρ·k; 1: halved last time, no improvement → keep; 2: improved → keep; 3: stalled → halve
    assert halving(increases, period, reduced, best_before, best).tolist() == [True, False, False, True]
