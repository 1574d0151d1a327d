"""Percentile smoothing of any registered detector (Chiang et al., NeurIPS 2020; Gaussian noise
as in Cohen et al., ICML 2019): the ``smoothed`` entry wraps a ``base`` entry.

The smoothed score of an image is the ``percentile`` (default the median) of the base score
over ``n`` copies of the image with Gaussian noise of standard deviation ``sigma`` (in [0, 1]
pixel units) added; the smoothed map is the per-pixel percentile of the base maps. The noise
an image gets is drawn from a stream seeded by the fit's seed and the image's content (its
bytes), so the smoothed detector is a deterministic function of the image: the same image
scores the same alone, in any batch and in any cell, and an attack that moves the image gets
fresh noise at every step (expectation over the same noise, as EOT asks). ``samples`` returns
the noisy base scores and maps themselves: the harness's certificate cell (``certify``) turns
them into certified bounds (``harness/certify.py``).

Everything else — fitting, features, category, pretrained weights, whether the base localizes
or has an input gradient — is the base's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import BadValue, PositiveInt, coerce, parameters

from .base import AnomalyOutput, Detector
from .registry import DETECTORS, create_detector, register_detector

NOISE_CHUNK = 64  # noisy copies of one image forwarded together (fixed: the draws must not depend on it)
CHUNK_STRIDE = 0x9E3779B97F4A7C15  # chunk k of an image's noise is seeded seed + k · stride (mod 2⁶³)


def noisy_chunk(image: Tensor, sigma: float, n: int, seed: int, k: int) -> Tensor:
    """The k-th ``NOISE_CHUNK`` of ``n`` copies of ``image`` (1, ...) with Gaussian noise σ, from
    its own stream (``seed``, k): a chunk can be drawn again alone, exactly (the backward pass does)."""
    m = min(NOISE_CHUNK, n - k * NOISE_CHUNK)
    generator = torch.Generator(device=image.device).manual_seed((seed + k * CHUNK_STRIDE) % 2**63)
    return image + sigma * torch.randn((m, *image.shape[1:]), generator=generator, device=image.device, dtype=image.dtype)


def noisy_copies(image: Tensor, sigma: float, n: int, seed: int) -> Iterator[Tensor]:
    """All ``n`` noisy copies, chunk by chunk: the draws depend on the seed alone, never on a batch."""
    for k in range(math.ceil(n / NOISE_CHUNK)):
        yield noisy_chunk(image, sigma, n, seed, k)


class NoisySamples(torch.autograd.Function):
    """One image's n noisy base outputs (scores (n,), maps (n, H, W)), forwarded without a graph.
    The backward pass rebuilds a chunk's graph (its noise drawn again, exactly) only when a
    nonzero gradient reaches that chunk's outputs, and adds the chunks' input gradients last
    chunk first, as autograd adds a checkpointed graph's: the gradient is the same, bit for bit,
    at a fraction of the cost where few copies carry it (a percentile of the scores: one)."""

    @staticmethod
    def forward(ctx, image: Tensor, smoothed: Smoothed, seed: int) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # an output the loss does not use gets None, not zeros
        ctx.save_for_backward(image)
        ctx.smoothed, ctx.seed = smoothed, seed
        return smoothed.every_chunk(image, seed)

    @staticmethod
    def backward(ctx, grad_score: Tensor | None, grad_map: Tensor | None) -> tuple[Tensor | None, None, None]:
        (image,) = ctx.saved_tensors
        smoothed, seed = ctx.smoothed, ctx.seed
        reached = torch.zeros(smoothed.n, dtype=torch.bool, device=image.device)  # the copies a gradient reaches
        for grad in (grad_score, grad_map):
            if grad is not None:
                reached |= grad.reshape(smoothed.n, -1).ne(0).any(dim=1)
        chunks = {int(i) // NOISE_CHUNK for i in torch.nonzero(reached).flatten().tolist()}  # one host sync per image
        total = None
        for k in sorted(chunks, reverse=True):
            rows = slice(k * NOISE_CHUNK, min((k + 1) * NOISE_CHUNK, smoothed.n))
            with torch.enable_grad():
                leaf = image.detach().requires_grad_(True)
                out = smoothed.chunk_output(leaf, seed, k)
                pairs = [(o, g[rows]) for o, g in ((out.score, grad_score), (out.map, grad_map)) if g is not None]
                (grad,) = torch.autograd.grad([o for o, _ in pairs], leaf, [g for _, g in pairs])
            total = grad if total is None else total + grad
        return total, None, None


def base_entry(base: dict) -> tuple[str, dict]:
    """A ``base`` entry as (registered name, constructor keys), its values coerced as a
    top-level entry's are (``8/255`` → a float), so it equals a plain entry of the same keys."""
    name, kwargs = base["name"], {k: v for k, v in base.items() if k != "name"}
    params = parameters(DETECTORS.get(name)) if name in DETECTORS else {}
    for key, value in kwargs.items():
        try:
            kwargs[key] = coerce(value, params[key][0]) if key in params else value
        except BadValue:  # base_problems names it
            pass
    return name, kwargs


def base_problems(base: Any) -> list[str]:
    """What is wrong with a ``base`` entry: a registered, non-smoothed detector with its own keys."""
    if not isinstance(base, dict) or not isinstance(base.get("name"), str):
        return [f"base: a detector entry {{name: <detector>, ...}}, got {base!r}"]
    name, kwargs = base_entry(base)
    if name not in DETECTORS:
        return [f"base.name: {DETECTORS.unknown_message(name)}"]
    if name == "smoothed":
        return ["base.name: a smoothed detector's base is not itself smoothed (one σ, one n)"]
    cls, found = DETECTORS.get(name), []
    params = parameters(cls)
    for key, value in kwargs.items():
        if key not in params:
            found.append(f"base.{key}: unknown key for {name!r}; allowed: {', '.join(params)}")
            continue
        try:
            coerce(value, params[key][0])
        except BadValue as err:
            found.append(f"base.{key}: {err}")
    if found:
        return found
    return [f"base: {p}" for p in getattr(cls, "check_config", lambda **_: [])(**kwargs)]


@register_detector("smoothed")
class Smoothed(Detector):
    """Percentile smoothing of the ``base`` detector under Gaussian noise (module docstring)."""

    name = "smoothed"
    version = "1"
    certifiable = True
    tiny = {"base": {"name": "patchcore", "backbone": "resnet18", "input_size": 64, "layers": ["layer2"]},
            "sigma": 0.25, "n": 8}

    def __init__(self, base: dict, sigma: float = 0.25, n: PositiveInt = 1000, percentile: float = 0.5):
        for problem in self.check_config(base=base, sigma=sigma, n=n, percentile=percentile):
            raise UserError(problem, key=problem.split(":")[0])
        super().__init__()
        name, kwargs = base_entry(base)
        self.base = create_detector(name, **kwargs)
        self.sigma, self.n, self.percentile = float(sigma), int(n), float(percentile)
        self.rank = max(1, math.ceil(self.n * self.percentile))  # the ⌈n·p⌉-th order statistic (1-based)
        for key in ("input_size", "weights", "localization", "differentiable", "precision"):
            setattr(self, key, getattr(self.base, key))
        self.register_buffer("noise_seed", torch.zeros((), dtype=torch.int64))  # the fit's seed: saved with the fit

    @classmethod
    def check_config(cls, base: Any = None, sigma: float = 0.25, n: int = 1000, percentile: float = 0.5, **_) -> list[str]:
        found = base_problems(base)
        if not sigma > 0:
            found.append(f"sigma: the noise's standard deviation must be positive, got {sigma!r}")
        if not 0 < percentile < 1:
            found.append(f"percentile: must be in (0, 1) (0.5: the median), got {percentile!r}")
        return found

    @classmethod
    def weights_needed(cls, base: dict | None = None, **_) -> list[str]:
        if not isinstance(base, dict) or base.get("name") not in DETECTORS:
            return []
        name, kwargs = base_entry(base)
        return DETECTORS.get(name).weights_needed(**kwargs)

    @classmethod
    def declared(cls, key: str, **kwargs) -> Any:
        """The base's declared trait (``localization``, ``differentiable``) for an entry's keys."""
        base = kwargs.get("base")
        if key != "certifiable" and isinstance(base, dict) and base.get("name") in DETECTORS:
            name, kwargs = base_entry(base)
            return DETECTORS.get(name).declared(key, **kwargs)
        return getattr(cls, key)

    @classmethod
    def fits_from(cls, base: dict | None = None, **_) -> tuple[str, dict] | None:
        """The base is what is fitted: one fit serves every σ and n, and the plain entry."""
        return base_entry(base) if isinstance(base, dict) else None

    def set_category(self, category: str) -> None:
        self.base.set_category(category)

    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        self.base.fit(normal_images, seed=seed)
        self.noise_seed.fill_(seed)

    def adopt(self, fitted: nn.Module, *, seed: int) -> None:
        self.base.load_state_dict(fitted.state_dict())
        self.noise_seed.fill_(seed)

    def features(self, x: Tensor) -> Tensor:
        return self.base.features(x)

    def image_seed(self, image: Tensor) -> int:
        """The noise stream of one image: (the fit's seed, the image's bytes) → 62 bits."""
        data = image.detach().float().cpu().contiguous().numpy().tobytes()
        digest = hashlib.sha256(int(self.noise_seed).to_bytes(8, "little", signed=True) + data).digest()
        return int.from_bytes(digest[:8], "little") >> 2

    def samples(self, x: Tensor) -> AnomalyOutput:
        """The base's scores (B, n) and maps (B, n, H, W) on n noisy copies of each image. Under
        an attack's gradient the copies are forwarded without a graph (``NoisySamples``) and a
        chunk's graph is rebuilt in the backward pass only where the gradient reaches it: memory
        holds one chunk's graph, not n copies', and a score's percentile, whose gradient is one
        copy's, costs one chunk's backward, not n copies' (values and gradients are the same)."""
        scores, maps = [], []
        for image in x.split(1):
            seed = self.image_seed(image)
            if torch.is_grad_enabled() and image.requires_grad:
                score, anomaly_map = NoisySamples.apply(image, self, seed)
            else:
                score, anomaly_map = self.every_chunk(image, seed)
            scores.append(score)
            maps.append(anomaly_map)
        return AnomalyOutput(torch.stack(scores), torch.stack(maps))

    def chunk_output(self, image: Tensor, seed: int, k: int) -> AnomalyOutput:
        return self.base(noisy_chunk(image, self.sigma, self.n, seed, k))

    def every_chunk(self, image: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """The base's scores (n,) and maps (n, H, W) on all n noisy copies of one image."""
        outputs = [self.chunk_output(image, seed, k) for k in range(math.ceil(self.n / NOISE_CHUNK))]
        return torch.cat([o.score for o in outputs]), torch.cat([o.map for o in outputs])

    def forward(self, x: Tensor) -> AnomalyOutput:
        noisy = self.samples(x)
        score = noisy.score.kthvalue(self.rank, dim=1).values
        anomaly_map = noisy.map.kthvalue(self.rank, dim=1).values
        return AnomalyOutput(score, anomaly_map)
