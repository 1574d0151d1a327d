"""The ``smoothed`` wrapper: its score and map are the percentile of the base's over n noisy
copies drawn from the image's own stream (fit seed, content), so an image scores the same in
any batch; the fit seed changes the draws; the base's traits and weights are the entry's."""

from __future__ import annotations

import torch

from robustad_bench.adapters import DETECTORS, create_detector
from robustad_bench.adapters.smoothed import noisy_copies
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
