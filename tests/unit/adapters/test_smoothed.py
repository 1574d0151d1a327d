"""The ``smoothed`` wrapper: its score and map are the percentile of the base's over n noisy
copies drawn from the image's own stream (fit seed, content), so an image scores the same in
any batch; the fit seed changes the draws; the base's traits and weights are the entry's."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from robustad_bench.adapters import DETECTORS, create_detector
from robustad_bench.adapters.smoothed import NOISE_CHUNK, noisy_copies
from robustad_bench.harness.grid import declared
from robustad_bench.harness.suite import Entry

BASE = {"name": "patchcore", "backbone": "resnet18", "input_size": 32, "layers": ["layer2"]}


def fitted(seed: int = 0, n: int = 10, percentile: float = 0.3):
    torch.manual_seed(0)
    detector = create_detector("smoothed", base=BASE, sigma=0.2, n=n, percentile=percentile)
    detector.fit(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), seed=seed)
    return detector.eval()


def test_the_score_and_map_are_the_percentile_of_the_base_over_the_images_noise():
    detector, x = fitted(), torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = detector(x)
        for b in range(3):
            base = [detector.base(c) for c in noisy_copies(x[b : b + 1], 0.2, 10, detector.image_seed(x[b : b + 1]))]
            scores, maps = torch.cat([o.score for o in base]), torch.cat([o.map for o in base])
            assert torch.equal(out.score[b], scores.sort().values[2])  # ⌈10 · 0.3⌉ = 3rd smallest
            assert torch.equal(out.map[b], maps.sort(dim=0).values[2])
        assert torch.equal(detector(x[1:2]).score[0], out.score[1])  # alone as in the batch
        detector.noise_seed.fill_(1)  # as fitting with seed 1 leaves it (the base's fit aside)
        assert not torch.equal(detector(x).score, out.score)  # the fit's seed seeds the noise


def test_the_entry_has_its_bases_traits_and_weights():
    entry = Entry("smoothed", "s", {"base": {**BASE, "weights": "timm"}, "n": 4})
    assert declared(entry, "localization") and declared(entry, "differentiable") and declared(entry, "certifiable")
    rad = Entry("smoothed", "r", {"base": {"name": "anomalib_rad"}})
    assert not declared(rad, "differentiable")
    assert DETECTORS.get("smoothed").weights_needed(**entry.kwargs) == ["timm:resnet18"]
    problems = DETECTORS.get("smoothed").check_config(base={"name": "patchcore", "bogus": 1}, sigma=0)
    assert any("base.bogus" in p for p in problems) and any(p.startswith("sigma") for p in problems)


def test_the_checkpointed_gradient_is_the_full_graphs():
    """Under a gradient each noise chunk is recomputed in the backward pass (memory: one chunk's
    graph); the score, map and input gradient equal those of the full graph over every copy."""
    detector, x = fitted(n=70, percentile=0.5), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = x.requires_grad_(True)
    out = detector(x)
    (grad,) = torch.autograd.grad(out.score.sum() + out.map.mean(), x)
    full_scores, full_maps = [], []
    for b in range(2):
        base = [detector.base(c) for c in noisy_copies(x[b : b + 1], 0.2, 70, detector.image_seed(x[b : b + 1]))]
        full_scores.append(torch.cat([o.score for o in base]))
        full_maps.append(torch.cat([o.map for o in base]))
    score = torch.stack(full_scores).kthvalue(35, dim=1).values
    maps = torch.stack(full_maps).kthvalue(35, dim=1).values
    (expected,) = torch.autograd.grad(score.sum() + maps.mean(), x)
    assert torch.equal(score, out.score.detach()) and torch.equal(maps, out.map.detach())
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-8) and grad.abs().sum() > 0


def checkpointed(detector, x):
    """The smoothed output as autograd's checkpoint computes it (every chunk's graph rebuilt in
    the backward pass, whatever gradient reaches it): the reference for ``NoisySamples``."""
    scores, maps = [], []
    for image in x.split(1):
        seed = detector.image_seed(image)
        outputs = [checkpoint(detector.chunk_output, image, seed, k, use_reentrant=False)
                   for k in range(math.ceil(detector.n / NOISE_CHUNK))]
        scores.append(torch.cat([o.score for o in outputs]))
        maps.append(torch.cat([o.map for o in outputs]))
    return torch.stack(scores).kthvalue(detector.rank, dim=1).values, torch.stack(maps).kthvalue(detector.rank, dim=1).values


LOSSES = {"score": lambda score, maps: score.sum(),
          "map": lambda score, maps: (maps * torch.linspace(-1, 1, maps.shape[-1], device=maps.device)).sum(),
          "both": lambda score, maps: 3 * score.sum() - maps.pow(2).mean()}


CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_the_gradient_is_the_checkpointed_graphs_bit_for_bit(loss, device):
    """A chunk no gradient reaches is not rebuilt; the gradient is the one checkpointing every
    chunk gives, exactly (three chunks, the last one short: n = 150)."""
    detector, x = fitted(n=150, percentile=0.5), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    detector, x = detector.to(device), x.to(device).requires_grad_(True)
    out, reference = detector(x), checkpointed(detector, x)
    assert torch.equal(out.score, reference[0]) and torch.equal(out.map, reference[1])  # the values under a gradient too
    (grad,) = torch.autograd.grad(LOSSES[loss](out.score, out.map), x)
    (expected,) = torch.autograd.grad(LOSSES[loss](*reference), x)
    assert torch.equal(grad, expected) and grad.abs().sum() > 0


def test_a_scores_gradient_rebuilds_only_the_chunk_holding_its_copy(monkeypatch):
    """The median's gradient is one copy's: one chunk of three is forwarded again under a
    graph, per image (the checkpointed graph rebuilt all three)."""
    detector, x = fitted(n=150, percentile=0.5), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    calls = {True: 0, False: 0}
    chunk_output = detector.chunk_output

    def counted(image, seed, k):
        calls[torch.is_grad_enabled()] += 1
        return chunk_output(image, seed, k)

    monkeypatch.setattr(detector, "chunk_output", counted)
    x = x.requires_grad_(True)
    torch.autograd.grad(detector(x).score.sum(), x)
    assert calls == {False: 6, True: 2}  # 2 images × 3 chunks forwarded; 2 × 1 rebuilt
    calls.update({True: 0, False: 0})
    checkpointed(detector, x)[0].sum().backward()
    assert calls[True] == 12  # every chunk forwarded under the checkpoint, then every one rebuilt


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass while ``fn`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_an_attack_on_a_smoothed_detector_keeps_no_graph_of_the_n_copies():
    detector = fitted(n=128)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    checkpointed = saved_bytes(lambda: detector(x))
    full = saved_bytes(lambda: [detector.base(c) for c in noisy_copies(x, 0.2, 128, detector.image_seed(x))])
    assert checkpointed < 0.1 * full, (checkpointed, full)


def test_an_images_gradient_does_not_depend_on_its_batch():
    """Each image's copies and their rebuilt chunks are its own: its input gradient alone
    equals its gradient in a batch, bit for bit."""
    detector, x = fitted(n=70, percentile=0.5), torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    batch = x.clone().requires_grad_(True)
    (in_batch,) = torch.autograd.grad(detector(batch).score.sum(), batch)
    for b in range(3):
        alone = x[b : b + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(detector(alone).score.sum(), alone)
        assert torch.equal(grad[0], in_batch[b]) and grad.abs().sum() > 0
