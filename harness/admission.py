"""The admission check (``robustad-bench check-detector``): does a detector keep the contract
the attacks rely on? RobustBench checks a model before it enters the board; so do we.

Each check passes, fails with a reason, or is n/a (e.g. the search check for a detector
without a memory bank). The detector is fitted on a few smooth random images of its input
size, then:

- ``input size``: ``score`` is (B,) and ``map`` is (B, H, W) at the input size
- ``finite``: scores, maps and features are finite
- ``differentiable``: every image gets a finite, non-zero gradient of its score
  (``no_grad``, numpy or faiss on the gradient path cut it), and the fitted model stays frozen;
  n/a for a detector admitted score-only (``differentiable = False``): the harness runs no
  attack on it that needs its gradient
- ``deterministic``: two forwards of the same images are equal (dropout or sampling left on breaks it)
- ``eval mode``: after ``eval()`` and a forward, no module is in training mode
- ``batch independent``: an image scores the same alone and in a batch
- ``state_dict round trip``: another random init that loads the state scores identically
- ``exact search``: a memory bank's search equals torch brute force
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tasks import seeded

ROUND_TRIP_SEED = 99  # another init than the checked model's: everything must come from the state


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not applicable
    reason: str = ""

    @property
    def status(self) -> str:
        return "n/a" if self.passed is None else "pass" if self.passed else "FAIL"


def smooth_images(n: int, size: int, seed: int) -> Tensor:
    """Random images with structure at several scales (noise upsampled), in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=generator)
    fine = torch.rand(n, 3, size, size, generator=generator)
    return (0.8 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) + 0.2 * fine).clamp(0, 1)


def check_detector(make: Callable[[int], nn.Module], *, seed: int = 0, n_train: int = 8, n_test: int = 4) -> list[Check]:
    """Run every check on ``make(init_seed)`` (a fresh, unfitted detector for that seed)."""
    with seeded(seed):
        detector = make(seed)
    size = int(getattr(detector, "input_size", 224))
    train, x = smooth_images(n_train, size, seed), smooth_images(n_test, size, seed + 1)
    if hasattr(detector, "set_category"):
        detector.set_category("check")
    detector.fit(train, seed=seed)
    detector.eval()
    return [shape_check(detector, x, size), finite_check(detector, x), gradient_check(detector, x),
            determinism_check(detector, x), eval_check(detector, x), batch_check(detector, x),
            round_trip_check(detector, make, x), search_check(detector)]


def build(cls: type, config: dict, init_seed: int) -> nn.Module:
    """A fresh ``cls(**config)``; the caller seeds the init."""
    return cls(**config)


def copy_of(model: nn.Module, init_seed: int) -> nn.Module:
    """For an instance without a known configuration: a copy of it, unfitted."""
    import copy

    return copy.deepcopy(model)


def checks_table(checks: list[Check]) -> str:
    from tabulate import tabulate

    return tabulate([[c.name, c.status, c.reason] for c in checks], headers=["check", "result", "why"], tablefmt="github")


def shape_check(detector: nn.Module, x: Tensor, size: int) -> Check:
    with torch.no_grad():
        out = detector(x)
    n = x.shape[0]
    if tuple(out.score.shape) != (n,) or tuple(out.map.shape) != (n, size, size):
        return Check("input size", False, f"score {tuple(out.score.shape)} and map {tuple(out.map.shape)} for {n} images of "
                                          f"{size} px; expected ({n},) and ({n}, {size}, {size})")
    return Check("input size", True, f"{size} px in, score ({n},), map ({n}, {size}, {size})")


def finite_check(detector: nn.Module, x: Tensor) -> Check:
    with torch.no_grad():
        out = detector(x)
        features = detector.features(x) if hasattr(detector, "features") else out.score
    bad = [name for name, t in (("score", out.score), ("map", out.map), ("features", features)) if not torch.isfinite(t).all()]
    return Check("finite", not bad, f"non-finite {', '.join(bad)}" if bad else "scores, maps and features are finite")


def gradient_check(detector: nn.Module, x: Tensor) -> Check:
    if not getattr(detector, "differentiable", True):
        return Check("differentiable", None, "score-only: declared without an input gradient, so only score-only, "
                                             "transfer and noise attacks run on it")
    x = x.clone().requires_grad_(True)
    for p in detector.parameters():
        p.grad = None
    score = detector(x).score
    if not score.requires_grad:
        return Check("differentiable", False, "the score does not depend on the input through autograd "
                                              "(torch.no_grad, numpy or faiss on the gradient path?)")
    (grad,) = torch.autograd.grad(score.sum(), x)
    per_image = grad.flatten(1).abs().sum(1)
    if not torch.isfinite(grad).all():
        return Check("differentiable", False, "the input gradient has non-finite values")
    if (per_image == 0).any():
        return Check("differentiable", False, f"{int((per_image == 0).sum())} of {len(per_image)} images get a zero gradient")
    if any(p.grad is not None for p in detector.parameters()):
        return Check("differentiable", False, "the attack's backward pass reached the fitted parameters (they must stay frozen)")
    return Check("differentiable", True, "every image gets a finite, non-zero input gradient")


def determinism_check(detector: nn.Module, x: Tensor) -> Check:
    with torch.no_grad():
        a, b = detector(x), detector(x)
    if not (torch.equal(a.score, b.score) and torch.equal(a.map, b.map)):
        diff = float((a.score - b.score).abs().max())
        return Check("deterministic", False, f"two forwards of the same images differ (score by up to {diff:.3g}): "
                                             "dropout or sampling left on in eval mode?")
    return Check("deterministic", True, "two forwards are equal")


def eval_check(detector: nn.Module, x: Tensor) -> Check:
    detector.eval()
    with torch.no_grad():
        detector(x)
    training = [name or "(detector)" for name, m in detector.named_modules() if m.training]
    if training:
        return Check("eval mode", False, f"in training mode after eval() and a forward: {', '.join(training[:5])}")
    return Check("eval mode", True, "every module stays in eval mode")


def batch_check(detector: nn.Module, x: Tensor) -> Check:
    with torch.no_grad():
        together = detector(x).score
        alone = torch.cat([detector(x[i:i + 1]).score for i in range(x.shape[0])])
    if not torch.allclose(together, alone, rtol=1e-4, atol=1e-5):
        diff = float((together - alone).abs().max())
        return Check("batch independent", False, f"an image scores differently alone and in a batch (by up to {diff:.3g}): "
                                                 "the forward mixes images across the batch")
    return Check("batch independent", True, "each image scores the same alone and in a batch")


def round_trip_check(detector: nn.Module, make: Callable[[int], nn.Module], x: Tensor) -> Check:
    try:
        with seeded(ROUND_TRIP_SEED):
            fresh = make(ROUND_TRIP_SEED)
        if hasattr(fresh, "set_category"):
            fresh.set_category("check")
        fresh.load_state_dict(detector.state_dict())
    except Exception as err:
        return Check("state_dict round trip", False, f"loading the state into a fresh instance failed: {type(err).__name__}: {err}")
    fresh.eval()
    with torch.no_grad():
        same = torch.equal(fresh(x).score, detector(x).score) and torch.equal(fresh(x).map, detector(x).map)
    return Check("state_dict round trip", same, "a fresh instance that loads the state scores identically" if same else
                 "a fresh instance that loads the state scores differently: fitted state lives outside buffers and parameters")


def search_check(detector: nn.Module) -> Check:
    from robustad_bench.adapters.knn import MemoryBank

    banks = [m for m in detector.modules() if isinstance(m, MemoryBank)]
    if not banks:
        return Check("exact search", None, "no memory bank")
    bank = banks[0].bank
    queries = bank[:5] + 0.1 * torch.randn(min(5, bank.shape[0]), bank.shape[1], generator=torch.Generator().manual_seed(0))
    k = min(3, bank.shape[0])
    brute = torch.cdist(queries, bank).topk(k, dim=1, largest=False).values
    same = torch.allclose(banks[0].distances(queries, k=k), brute, rtol=1e-4, atol=1e-4)
    return Check("exact search", same, "the bank's search equals torch brute force" if same else
                 "the bank's search differs from torch brute force")
