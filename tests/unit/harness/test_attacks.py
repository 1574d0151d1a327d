"""Attacks against known answers, and the threat-model invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustad_bench.adapters import AnomalyOutput
from robustad_bench.core.errors import UserError
from robustad_bench.harness.attacks import ATTACKS, Objective, project, run_attack


def objective_loss(detector, x, labels, masks, task):
    """The per-image attacker loss the harness hands every attack."""
    return Objective(detector, labels, masks, task)(x)


class Linear(nn.Module):
    """score = <w, x>, map = w ⊙ x summed over channels: gradients known in closed form."""

    def __init__(self, shape=(3, 8, 8), seed=0):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), requires_grad=False)

    def forward(self, x):
        m = (x * self.w).sum(1)
        return AnomalyOutput(score=m.flatten(1).sum(1), map=m)

    def features(self, x):
        return x * self.w


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
    adv = run_attack("fgsm", det, x, labels, masks, eps=eps)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()  # normals up, anomalies down
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)


def test_pgd_linf_moves_to_the_corner_of_the_ball(batch):
    x, labels, masks = batch
    det, eps = Linear(), 8 / 255
    adv = run_attack("pgd", det, x, labels, masks, eps=eps, steps=5, random_start=False)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)  # α·steps = 2.5 ε ≥ ε


def test_pgd_l2_follows_the_gradient_direction(batch):
    x, labels, masks = batch
    det, eps = Linear(), 0.5
    adv = run_attack("pgd", det, x, labels, masks, eps=eps, norm="l2", steps=3, random_start=False)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    expected = x + eps * y * det.w / det.w.norm()
    assert torch.allclose(adv, expected, atol=1e-5)


def test_localization_objective_uses_the_mask(batch):
    x, labels, masks = batch
    det, eps = Linear(), 4 / 255
    adv = run_attack("fgsm", det, x, labels, masks, eps=eps, objective="localization")
    sign = (1 - 2 * masks).unsqueeze(1)  # +1 normal pixel, −1 anomalous pixel
    assert torch.allclose(adv, x + eps * sign * det.w.sign(), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", sorted(name for name in ATTACKS.names() if ATTACKS.get(name).perturbs))
def test_attacks_stay_in_the_ball_and_the_box(name, norm):
    g = torch.Generator().manual_seed(3)
    for trial in range(3):
        x = torch.rand(4, 3, 8, 8, generator=g)
        x[0] = 0.0
        x[1] = 1.0  # images on the box edges
        labels = torch.tensor([0, 1, 0, 1])
        masks = torch.zeros(4, 8, 8)
        masks[1::2, 2:5, 2:5] = 1
        eps = float(torch.rand(1, generator=g)) * (0.1 if norm == "linf" else 2.0)
        spec = ATTACKS.get(name)  # its own tiny configuration; a transfer attack crafts on another detector
        kwargs = {**spec.tiny, "seed": trial, **({"source": "other", "source_detector": Linear(seed=9)} if spec.kind == "transfer" else {})}
        adv = run_attack(name, Linear(seed=trial), x, labels, masks, eps=eps, norm=norm, **kwargs)
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.double().norm(dim=1)
        assert (size <= eps + (1e-6 if norm == "linf" else 0)).all(), (size.max().item(), eps)  # L2: inside by construction
        assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_raises_the_objective_over_clean(batch):
    x, labels, masks = batch
    det = Linear()
    adv = run_attack("pgd", det, x, labels, masks, eps=2 / 255, steps=3, seed=0)
    assert (objective_loss(det, adv, labels, masks, "detection") > objective_loss(det, x, labels, masks, "detection")).all()


def test_restarts_keep_the_best_per_image(batch):
    x, labels, masks = batch
    det = Linear()
    one = run_attack("pgd", det, x, labels, masks, eps=2 / 255, steps=1, step_size=1e-4, seed=0)
    many = run_attack("pgd", det, x, labels, masks, eps=2 / 255, steps=1, step_size=1e-4, restarts=4, seed=0)
    loss = lambda a: objective_loss(det, a, labels, masks, "detection")  # noqa: E731
    assert (loss(many) >= loss(one) - 1e-6).all()


def test_none_returns_the_same_tensor(batch):
    x, labels, masks = batch
    assert run_attack("none", Linear(), x, labels, masks) is x


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


def test_apgd_reaches_the_optimum_of_a_linear_score(batch):
    x, labels, masks = batch
    det, eps = Linear(), 8 / 255
    adv = run_attack("apgd", det, x, labels, masks, eps=eps, steps=10, seed=0)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)  # the best vertex of the box


def test_apgd_checkpoints_follow_the_paper():
    from robustad_bench.harness.attacks.apgd import checkpoints

    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_square_only_queries_scores_and_climbs(batch):
    x, labels, masks = batch
    det, eps = Linear(), 4 / 255

    class ScoreOnly(nn.Module):  # refuses to be differentiated: a true black box
        def forward(self, images):
            assert not torch.is_grad_enabled()
            return det(images)

    adv = run_attack("square", ScoreOnly(), x, labels, masks, eps=eps, steps=200, seed=0)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, eps), atol=1e-6)  # L∞ square stays on vertices
    noisy = run_attack("noise", det, x, labels, masks, eps=eps, seed=0)
    loss = lambda a: objective_loss(det, a, labels, masks, "detection")  # noqa: E731
    assert (loss(adv) > loss(noisy)).all() and (loss(adv) > loss(x)).all()


def test_noise_has_the_budget_but_no_direction(batch):
    x, labels, masks = batch
    adv = run_attack("noise", Linear(), x, labels, masks, eps=0.2, norm="l2", seed=0)
    assert torch.allclose((adv - x).flatten(1).norm(dim=1), torch.full((6,), 0.2), atol=1e-5)


class TinyNet(nn.Module):
    """A small nonlinear scorer: conv → ReLU → linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 1)
        for p in self.parameters():
            p.requires_grad_(False)
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        s = self.head(torch.relu(self.conv(x)).flatten(1)).squeeze(1)
        return AnomalyOutput(score=s, map=s[:, None, None].expand(-1, 8, 8))


def test_pgd_matches_torchattacks_on_a_two_logit_model(batch):
    import torchattacks

    from robustad_bench.harness.attacks.official import TwoLogits

    x, labels, masks = batch
    det, eps, steps = TinyNet(), 8 / 255, 7
    ours = run_attack("pgd", det, x, labels, masks, eps=eps, steps=steps, step_size=2 / 255, random_start=False)
    theirs = torchattacks.PGD(TwoLogits(det, 0.0), eps=eps, alpha=2 / 255, steps=steps, random_start=False)(x, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_autoattack_is_the_worst_case_of_its_parts(batch):
    x, labels, masks = batch
    det, eps = TinyNet(), 8 / 255
    kwargs = {"eps": eps, "seed": 0}
    ensemble = run_attack("autoattack", det, x, labels, masks, steps=5, queries=30, threshold=0.0, **kwargs)
    parts = [
        run_attack("apgd", det, x, labels, masks, steps=5, **kwargs),
        run_attack("fab", det, x, labels, masks, steps=5, threshold=0.0, **kwargs),
        run_attack("square", det, x, labels, masks, steps=30, **kwargs),
        run_attack("pgd", det, x, labels, masks, steps=5, **kwargs),
    ]
    loss = lambda a: objective_loss(det, a, labels, masks, "detection")  # noqa: E731
    for part in parts:
        assert (loss(ensemble) >= loss(part) - 1e-6).all()


def test_segpgd_raises_the_localization_objective(batch):
    x, labels, masks = batch
    det = Linear()
    adv = run_attack("segpgd", det, x, labels, masks, eps=4 / 255, steps=5, seed=0)
    loss = lambda a: objective_loss(det, a, labels, masks, "localization")  # noqa: E731
    assert (loss(adv) > loss(x)).all()


def test_eot_averages_the_gradient_of_a_randomised_detector(batch):
    x, labels, masks = batch
    base = Linear()

    class Noisy(nn.Module):  # score = <w + 3·noise, x>: one sample's gradient is mostly noise
        def forward(self, images):
            out = base(images)
            noise = torch.randn(images.shape) * 3
            return AnomalyOutput(score=out.score + (images * noise).flatten(1).sum(1), map=out.map)

    torch.manual_seed(0)
    agree = lambda adv: ((adv - x).sign() == ((1 - 2 * labels).view(-1, 1, 1, 1) * base.w.sign())).float().mean()  # noqa: E731
    once = run_attack("fgsm", Noisy(), x, labels, masks, eps=4 / 255)
    averaged = run_attack("fgsm", Noisy(), x, labels, masks, eps=4 / 255, eot=200)
    assert agree(averaged) > 0.9 and agree(once) < 0.75


class FeatureNet(TinyNet):
    """TinyNet exposing its conv features, as detectors do for surrogate heads."""

    def features(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.parametrize("head_data", ["labels", "pseudo"])
def test_surrogate_head_attack_hurts_the_detector_it_never_differentiates(batch, head_data):
    x, labels, masks = batch
    det = FeatureNet()
    calls = []
    original = det.forward
    det.forward = lambda images: calls.append(images.requires_grad) or original(images)  # record score calls
    adv = run_attack("surrogate", det, x, labels, masks, eps=8 / 255, steps=5, head_data=head_data, seed=0)
    assert not any(calls)  # the detector's score is never differentiated (nor even called)
    assert ((adv - x).abs().amax(dim=(1, 2, 3)) <= 8 / 255 + 1e-6).all()
    if head_data == "labels":  # a head fitted on the true labels transfers to the score here
        loss = lambda a: objective_loss(det, a, labels, masks, "detection").mean()  # noqa: E731
        assert loss(adv) > loss(x)


def test_transfer_crafts_on_the_source_only(batch):
    x, labels, masks = batch
    source, target = Linear(seed=1), Linear(seed=2)
    adv = run_attack("transfer", target, x, labels, masks, source="a", eps=4 / 255, steps=3, source_detector=source, seed=0)
    assert torch.equal(adv, run_attack("pgd", source, x, labels, masks, eps=4 / 255, steps=3, seed=0))
    with pytest.raises(UserError, match="source detector 'a'"):
        run_attack("transfer", target, x, labels, masks, source="a", eps=4 / 255)


def test_adaptive_pgd_keeps_the_calibrated_entropy_low(batch):
    from robustad_bench.harness.attacks.objective import binary_entropy

    x, labels, masks = batch
    det = TinyNet()
    with torch.no_grad():
        centre = float(det(x).score.median())
    calibrator = lambda s: torch.sigmoid(s - centre)  # noqa: E731
    # a budget at which plain PGD leaves scores near the boundary, where the flag fires
    kwargs = {"eps": 4 / 255, "steps": 20, "seed": 0}
    plain = run_attack("pgd", det, x, labels, masks, **kwargs)
    adaptive = run_attack("pgd", det, x, labels, masks, entropy_weight=10.0, calibrator=calibrator, **kwargs)
    with torch.no_grad():
        h = lambda a: binary_entropy(calibrator(det(a).score)).mean()  # noqa: E731
        assert h(adaptive) < 0.5 * h(plain)
    with pytest.raises(UserError, match="calibrator"):
        run_attack("fgsm", det, x, labels, masks, eps=4 / 255, entropy_weight=1.0)


def test_simba_over_every_pixel_reaches_the_optimum_of_a_linear_score(batch):
    x, labels, masks = batch
    det, eps = Linear(), 4 / 255
    calls = []

    class ScoreOnly(nn.Module):  # a true black box: never differentiated
        def forward(self, images):
            assert not torch.is_grad_enabled()
            calls.append(images.shape[0])
            return det(images)

    adv = run_attack("simba", ScoreOnly(), x, labels, masks, eps=eps, basis="pixel", steps=3 * 8 * 8,
                     threshold=0.0, pixel_threshold=0.0)
    y = (1 - 2 * labels).view(-1, 1, 1, 1).float()
    assert torch.allclose(adv, x + eps * y * det.w.sign(), atol=1e-6)  # each coordinate to its best vertex
    # the clean query, one query per direction for −δ, and one for +δ where −δ did not help (y·w > 0)
    plus = int(((y.view(-1, 1) * det.w.flatten()) > 0).sum())
    assert sum(calls) == 6 + 6 * 3 * 8 * 8 + plus


def test_simba_dct_directions_are_an_orthonormal_low_frequency_basis():
    from robustad_bench.harness.attacks.simba import directions

    q = directions(torch.arange(3 * 2 * 2), "dct", (3, 8, 8), (2, 2), "cpu").flatten(1)  # (12, 192)
    assert torch.allclose(q @ q.T, torch.eye(12), atol=1e-5)
    assert torch.allclose(q[0].view(3, 8, 8)[0], torch.full((8, 8), 1 / 8))  # the DC pattern of channel 0


def test_caa_chains_its_stages_and_keeps_the_worst_case(batch, toy_attack):
    from robustad_bench.harness.attacks.threat import REQUIRED

    x, labels, masks = batch
    det, eps = TinyNet(), 8 / 255
    loss = lambda a: objective_loss(det, a, labels, masks, "detection")  # noqa: E731
    first = run_attack("apgd", det, x, labels, masks, eps=eps, steps=4, threshold=0.0)
    both = run_attack("caa", det, x, labels, masks, eps=eps, policy="apgd:4 > pgd:3", threshold=0.0)
    assert (loss(both) >= loss(first) - 1e-6).all()  # the first stage is the same run: never worse
    starts = []

    def spy(objective, x, threat, context):  # a stage that records where it was asked to start
        starts.append(context.start)
        return x

    toy_attack(spy, kind="gradient", iterative=True, threat={"norm": "linf", "eps": REQUIRED, "steps": 1})
    run_attack("caa", det, x, labels, masks, eps=eps, policy="apgd:4 > test_toy:1", threshold=0.0)
    assert starts[0] is not None and torch.equal(starts[0], first)  # the second stage starts from the first's images


def test_caa_policy_is_checked_at_validation():
    from robustad_bench.harness.attacks import ATTACKS

    spec = ATTACKS.get("caa")
    assert spec.problems(spec.resolve({"eps": 0.03})) == []  # the paper's L∞ policy
    (key, problem), = spec.problems(spec.resolve({"eps": 0.03, "policy": "apgd:10 > square:5"}))
    assert key == "policy" and "square" in problem and "apgd" in problem
    (key, problem), = spec.problems(spec.resolve({"eps": 0.5, "norm": "l2", "objective": "localization"}))
    assert "fab" in problem  # the paper's L2 policy ends with a detection-only minimal-norm stage
    assert "NAME:STEPS" in spec.problems(spec.resolve({"eps": 0.03, "policy": "apgd"}))[0][1]


def test_sea_is_at_least_each_of_its_losses_per_image(batch):
    x, labels, masks = batch
    det = TinyNet()

    class Mapped(nn.Module):  # a map that varies over pixels, so each pixel loss has its own gradient
        def forward(self, images):
            m = torch.relu(det.conv(images)).sum(1) - 1.0
            return AnomalyOutput(score=m.flatten(1).amax(1), map=m)

    model = Mapped()
    common = {"eps": 4 / 255, "steps": 6, "pixel_threshold": 0.0}
    ensemble = run_attack("sea", model, x, labels, masks, losses="balanced-ce+masked-ce+js+masked-spherical", **common)
    loss = lambda a: objective_loss(model, a, labels, masks, "localization")  # noqa: E731
    assert (loss(ensemble) > loss(x)).all()
    for part in ("balanced-ce", "masked-ce", "js", "masked-spherical"):
        assert (loss(ensemble) >= loss(run_attack("sea", model, x, labels, masks, losses=part, **common)) - 1e-6).all()


def test_sea_pixel_losses_agree_with_their_definitions():
    from robustad_bench.harness.attacks.sea import pixel_losses

    logit = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])  # one image, 2×2 pixels
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # top row anomalous
    p1 = torch.sigmoid(logit)
    p_true = torch.where(masks > 0, p1, 1 - p1)
    ce = -p_true.log()
    correct = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.allclose(pixel_losses(logit, masks, "balanced-ce"), ce[0, 0].mean() + ce[0, 1].mean())
    assert torch.allclose(pixel_losses(logit, masks, "masked-ce"), (ce * correct).mean().view(1))
    p = torch.stack([1 - p1, p1], -1)
    sph = -p_true / p.norm(dim=-1)
    assert torch.allclose(pixel_losses(logit, masks, "masked-spherical"), (sph * correct).mean().view(1))
    onehot = torch.stack([1 - masks, masks], -1)
    m = (p + onehot) / 2
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (onehot * (onehot.clamp_min(1e-12) / m).log()).sum(-1)
    assert torch.allclose(pixel_losses(logit, masks, "js"), js.mean().view(1), atol=1e-6)


def test_a3_discards_images_that_stop_gaining_and_counts_its_passes(batch):
    from robustad_bench.harness.tasks import CountingDetector

    x, labels, masks = batch
    common = {"eps": 8 / 255, "steps": 6, "restarts": 4, "adi_steps": 2, "threshold": 0.0}
    keep_all, discarding = CountingDetector(TinyNet()), CountingDetector(TinyNet())
    full = run_attack("a3", keep_all, x, labels, masks, discard_tol=-float("inf"), **common)
    fast = run_attack("a3", discarding, x, labels, masks, **common)
    assert keep_all.gradient_passes == 6 * 6 * 4  # every image, every restart, every step
    assert discarding.gradient_passes < keep_all.gradient_passes
    loss = lambda a: objective_loss(TinyNet(), a, labels, masks, "detection")  # noqa: E731
    assert (loss(fast) > loss(x)).all() and (loss(full) >= loss(fast) - 1e-6).all()  # restarts only add


def test_a3_step_sizes_follow_the_cosine_schedule():
    from robustad_bench.harness.attacks.a3 import cosine_steps

    steps = cosine_steps(0.1, 10)
    assert steps[0] == pytest.approx(0.1) and steps[-1] > 0.01 and all(a >= b for a, b in zip(steps, steps[1:]))
    assert min(cosine_steps(0.1, 50)) > 0.1 * 0.001 and cosine_steps(0.1, 50)[-1] < 0.01


def test_rows_record_what_each_attack_runs_not_the_generic_threat_model():
    """APGD starts randomly with an adaptive η (no α); A³ restarts randomly on a cosine
    schedule; CAA runs its stages' steps; an attack records only the threat fields it reads."""
    def record(name, **given):
        spec = ATTACKS.get(name)
        point = spec.resolve({"eps": 8 / 255, **given})
        return spec.what_ran(spec.threat_model(point), spec.own_options(point))

    apgd = record("apgd", steps=50)
    assert apgd["random_start"] is True and apgd["alpha"] is None and "2ε" in apgd["step_rule"]
    a3 = record("a3", steps=20, adi_steps=7)
    assert a3["random_start"] is True and a3["alpha"] is None and "cosine" in a3["step_rule"]
    caa = record("caa")
    assert caa["steps"] == 50 + 25 + 125 and [s["attack"] for s in caa["stages"]] == ["apgd", "apgd", "apgd"]
    pgd = record("pgd", steps=4)
    assert pgd["alpha"] == pytest.approx(2.5 * 8 / 255 / 4) and pgd["random_start"] is True
    assert set(record("fgsm")) == {"norm", "eps"}  # one step of ε: no α, no start, no restarts to record
    assert set(record("autoattack", parts="apgd+square")["parts"]) == {"apgd", "square"}


@pytest.mark.parametrize("name", sorted(ATTACKS.names()))
def test_each_attacks_tiny_configuration_is_valid(name):
    spec = ATTACKS.get(name)
    point = spec.resolve({**({"eps": 8 / 255} if "eps" in spec.threat else {}), **spec.tiny, **({"source": "other"} if spec.kind == "transfer" else {})})
    assert spec.problems(point) == []
    assert point.get("steps", 1) <= 5 or spec.kind == "score-only"  # seconds on a CPU


def test_the_norm_is_a_named_value_equal_to_its_string():
    import json

    from robustad_bench.core.schema import BadValue, coerce
    from robustad_bench.harness.attacks.threat import Norm, ThreatModel

    assert coerce("l2", Norm) is Norm.L2 and ThreatModel("linf", 0.1).norm is Norm.LINF  # suites and defaults alike
    assert Norm.LINF == "linf" and {Norm.LINF: 1}["linf"] == 1 and f"{Norm.L2}" == "l2" and json.dumps([Norm.L2]) == '["l2"]'
    with pytest.raises(BadValue, match="allowed: 'linf', 'l2'"):
        coerce("l1", Norm)
    assert ThreatModel("l1", 0.1).problems()[0][0] == "norm"
