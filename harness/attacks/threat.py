"""The threat model as a value: norm, budget, steps, step size, random start, restarts.

An attack receives one frozen ``ThreatModel`` built by the harness from the suite entry;
the step size α is derived here and nowhere else (α = 2.5·ε/steps unless ``step_size`` is
given: PatchGuard's and ZARND's choice, Madry et al.'s rule of thumb). The geometry every
attack shares — projection onto the ε-ball ∩ [0,1] box, the unit ascent direction, the
random start — lives here too, so that L∞ and L2 mean the same thing in every attack.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from robustad_bench.core.schema import NonNegative, PositiveInt

if TYPE_CHECKING:
    from .rng import ImageRandom

class Norm(str, Enum):
    """The threat model's norm, a value with a name (RobustBench's ``ThreatModel``): compares
    equal to its string, which rows and suites write."""

    LINF = "linf"
    L2 = "l2"
    __str__ = str.__str__  # "linf", not "Norm.LINF", in f-strings and JSON
    __format__ = str.__format__
    __hash__ = str.__hash__  # one key with its string in sets and dicts
    __repr__ = str.__repr__  # messages show the value a suite writes
REQUIRED = inspect.Parameter.empty  # a threat default that a suite entry must give (ε)


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm = Norm.LINF
    eps: NonNegative = 0.0
    steps: PositiveInt = 1  # iterations (gradient attacks) or queries per image (score-only attacks)
    step_size: float | None = None  # α; None: 2.5·ε/steps
    random_start: bool = False
    restarts: PositiveInt = 1

    def __post_init__(self):
        if self.norm in tuple(Norm):  # a suite's or a default's string becomes the named value
            object.__setattr__(self, "norm", Norm(self.norm))

    @property
    def alpha(self) -> float:
        return 2.5 * self.eps / self.steps if self.step_size is None else self.step_size

    def problems(self) -> list[tuple[str, str]]:
        """(key, problem) pairs; empty when the threat model is valid."""
        problems = []
        if self.norm not in tuple(Norm):
            problems.append(("norm", f"{self.norm!r} is not allowed; allowed: {', '.join(repr(n.value) for n in Norm)}"))
        if self.eps < 0 or (self.norm == Norm.LINF and self.eps > 1):
            problems.append(("eps", f"ε must be in [0, 1] for linf (≥ 0 for l2), got {self.eps}"))
        for key in ("steps", "restarts"):
            if getattr(self, key) < 1:
                problems.append((key, f"must be at least 1, got {getattr(self, key)}"))
        if self.step_size is not None and self.step_size <= 0:
            problems.append(("step_size", f"must be positive, got {self.step_size}"))
        return problems

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return project(x_adv, x, self.eps, self.norm)

    def ascent(self, grad: Tensor) -> Tensor:
        return ascent_direction(grad, self.norm)

    def start(self, x: Tensor, rng: ImageRandom) -> Tensor:
        """A random point of the ε-ball (L∞: uniform in the box; L2: uniform direction and
        radius), drawn per image; ``x`` itself without ``random_start``."""
        if not self.random_start:
            return x.detach()
        return self.project(x + random_perturbation(x, self.eps, self.norm, rng, uniform_radius=True), x)


THREAT_FIELDS = {f.name: f for f in dataclasses.fields(ThreatModel)}


def per_image_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest-ascent direction of unit size in the given norm."""
    return grad.sign() if norm == Norm.LINF else grad / per_image_norm(grad)


L2_SHRINK = 1 - 1e-6  # the margin an L2 projection keeps inside the ball when it must shrink again
L2_ROUNDS = 4  # shrinking rounds; fp32 rounding of x + δ leaves at most a few ulp to remove


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the ε-ball around ``x`` intersected with the [0,1] box.

    L2: the scale is computed in float64, and the perturbation that is returned — ``x_adv − x``
    after fp32 rounding and clipping — is measured again and shrunk where it still exceeds ε,
    so the saved image is inside the ball by construction (Square's large stripes drifted
    2e-5 outside with an fp32 norm)."""
    delta = x_adv - x
    if norm == Norm.LINF:
        return (x + delta.clamp(-eps, eps)).clamp(0.0, 1.0)
    scale = (eps / exact_norm(delta)).clamp(max=1.0)
    out = (x + delta * scale.to(delta.dtype)).clamp(0.0, 1.0)
    for _ in range(L2_ROUNDS):
        length = exact_norm(out - x)
        if not bool((length > eps).any()):
            break
        shrink = torch.where(length > eps, eps / length * L2_SHRINK, torch.ones_like(length))
        out = (x + (out - x) * shrink.to(x.dtype)).clamp(0.0, 1.0)
    return out


def exact_norm(v: Tensor) -> Tensor:
    """Per-image L2 norm in float64, shaped to broadcast against ``v``."""
    return v.double().flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *([1] * (v.dim() - 1)))


def random_perturbation(x: Tensor, eps: float, norm: str, rng: ImageRandom, *, uniform_radius: bool) -> Tensor:
    """Per-image random δ: L∞ uniform in [−ε, ε]; L2 a uniform direction of length ε
    (times a uniform radius in [0, 1] with ``uniform_radius``)."""
    shape = x.shape[1:]
    if norm == Norm.LINF:
        return (rng.rand(shape) * 2 - 1) * eps
    direction = rng.randn(shape)
    delta = eps * direction / per_image_norm(direction)
    if uniform_radius:
        delta = delta * rng.rand((1,) * len(shape))
    return delta
