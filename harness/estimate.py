"""What a suite will cost on this device, before a user commits to it (``run --dry-run --estimate``).

Projected time = Σ over cells of test images × (gradient passes × measured seconds per
gradient pass + forward passes × seconds per forward pass), plus each fit group's fit and
clean scoring:

- passes per image are counted, not declared: each attack point runs once on a stand-in
  detector (a one-layer network on 2 images of 16 px that no attack can fool, so attacks
  that stop on success run to the end) — the count every attack really makes;
- the seconds per image are measured by a short probe of each detector entry on the
  device, at the suite's batch size, with its memory bank grown to the size fitting on the
  category's train images gives (``bank_rows``); fitting is timed on 4 and 8 random images
  (one epoch for a detector that trains in ``epochs``): a fixed part plus a per-image slope,
  scaled to the category's train images (and epochs);
- image counts come from the dataset (``counts``: the user's folder when there, else the
  published counts).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustad_bench.core.files import atomic_write_bytes

from . import __version__
from .attacks import CellData, Context, prepare_attack
from .attacks.recall import Recall, parts_of, run_order, taken_parts
from .datasets.base import digest
from .grid import Cell
from .plan import Plan
from .tasks import CountingDetector, seeded

log = logging.getLogger(__name__)
STAND_IN_SIZE = 16
FIT_PROBE_IMAGES = 8


class StandIn(nn.Module):
    """A detector with the contract's shape and almost no cost: for counting passes."""

    def __init__(self):
        super().__init__()
        with seeded(0):
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def features(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def forward(self, x: Tensor):
        from robustad_bench.adapters import AnomalyOutput

        maps = self.conv(x).pow(2).mean(1)
        return AnomalyOutput(maps.flatten(1).mean(1), maps)


@dataclass
class Passes:
    """Passes per image one attack point makes (through the target and a transfer source)."""

    forward: float  # forward-only passes (no input gradient)
    gradient: float  # forward + backward passes
    source_forward: float = 0.0
    source_gradient: float = 0.0
    error: str | None = None  # the attack could not run on the stand-in


def count_passes(cell: Cell, images: int = 2, taken: tuple[str, ...] = ()) -> Passes:
    """Run ``cell``'s attack on the stand-in and count what it forwards, per image. ``taken``:
    the parts (names) of a composite attack that another cell of its group makes — run
    beforehand, uncounted, and handed to it as the group's ``Recall`` does."""
    spec, point = cell.spec, cell.attack.kwargs
    if spec.kind == "none":
        return Passes(0.0, 0.0)
    if spec.kind == "certificate":  # one forward of the smoothed detector per image: its n noisy base passes
        return Passes(1.0, 0.0)
    x = torch.rand(images, 3, STAND_IN_SIZE, STAND_IN_SIZE, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(images, dtype=torch.long)  # normal images and an unreachable threshold: no early success
    masks = torch.zeros(images, STAND_IN_SIZE, STAND_IN_SIZE)
    masks[:, 4:8, 4:8] = 1
    target, source = CountingDetector(StandIn()), CountingDetector(StandIn())
    ids = tuple(range(images))
    context = Context(threshold=1e9, pixel_threshold=1e9, seed=cell.seed, images=ids,
                      source=source if spec.kind == "transfer" else None)
    try:
        if taken:
            context = replace(context, recall=made_parts(spec, point, taken, StandIn(), x, labels, masks, context))
        attack = prepare_attack(spec, point, target, context, CellData(x, x, labels, images, torch.device("cpu")))
        attack.run(target, x, labels, masks, images=ids)
    except Exception as err:  # noqa: BLE001 - an attack the stand-in cannot take is reported, not fatal
        return Passes(0.0, 0.0, error=f"{err.__class__.__name__}: {err}")
    return Passes((target.forward_passes - target.gradient_passes) / images, target.gradient_passes / images,
                  (source.forward_passes - source.gradient_passes) / images, source.gradient_passes / images)


def made_parts(spec, point, taken: tuple[str, ...], detector: nn.Module, x: Tensor, labels: Tensor, masks: Tensor,
               context: Context) -> Recall:
    """A ``Recall`` holding the ``taken`` parts of a composite attack, run on ``detector``."""
    parts = [found for found in parts_of(spec, point) if found[0].name in taken]
    recall = Recall(Counter(key for *_, key in parts))
    for part, threat, options, key in parts:
        objective = spec.objective(detector, labels, masks, point)
        recall.offer(key, context.images, part.run(objective, x, threat, context, **options))
    return recall


def taken_names(cells: list[Cell]) -> list[tuple[str, ...]]:
    """Per cell of one fit group, the names of its composite attack's parts another cell makes
    (the runner runs that cell first: ``run_order``)."""
    calls = [(cell.spec, cell.attack.kwargs) for cell in cells]
    order = run_order(calls)  # as the runner runs them
    names: list[tuple[str, ...]] = [()] * len(cells)
    for position, keys in zip(order, taken_parts([calls[i] for i in order])):
        names[position] = tuple(sorted(part.name for part, *_, key in parts_of(*calls[position]) if key in keys))
    return names


def read_memo(path: Path | None) -> dict[str, Passes]:
    try:
        return {key: Passes(**value) for key, value in json.loads(path.read_text()).items()} if path else {}
    except (OSError, ValueError, TypeError):
        return {}


def write_memo(path: Path | None, passes: dict[str, Passes]) -> None:
    if path is not None:
        atomic_write_bytes(path, json.dumps({key: asdict(p) for key, p in passes.items() if p.error is None}).encode())


@dataclass
class Cost:
    """Measured seconds per image of one detector entry on one device."""

    forward: float
    gradient: float  # forward + backward w.r.t. the input
    fit_per_image: float
    batch_size: int
    bank_rows: int | None
    peak_memory: int | None  # bytes, CUDA only
    fit_fixed: float = 0.0  # seconds per fit whatever the number of train images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 2) -> float:
    """Seconds per call of ``fn`` on ``device`` after one warm-up call."""
    fn()  # warm-up (cuDNN autotuning, allocator, lazy init)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def grow_banks(detector: nn.Module, n_train: int) -> int | None:
    """Give the detector's memory banks the rows fitting on ``n_train`` images would give
    (its ``bank_rows``), random: the kNN cost at the real size."""
    from robustad_bench.adapters.knn import MemoryBank

    rows = detector.bank_rows(n_train) if hasattr(detector, "bank_rows") else None
    if rows is None:
        return None
    for bank in (m for m in detector.modules() if isinstance(m, MemoryBank)):
        generator = torch.Generator().manual_seed(0)
        bank.set(torch.randn(rows, bank.bank.shape[1], generator=generator).to(bank.bank.device))
    return rows


def one_epoch(name: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A detector that trains in ``epochs`` (a constructor key) is timed for one epoch:
    (its keys with ``epochs: 1``, the configured epochs to scale by); others as they are, 1."""
    import inspect

    from robustad_bench.adapters import DETECTORS

    parameters = inspect.signature(DETECTORS.get(name)).parameters
    if "epochs" not in parameters:
        return dict(kwargs), 1
    return {**kwargs, "epochs": 1}, int(kwargs.get("epochs", parameters["epochs"].default))


def probe(entry, *, device: torch.device, batch_size: int, n_train: int, repeats: int = 2) -> Cost:
    """Time one detector entry: fit on a few random images, then forward and forward+backward
    passes at ``batch_size`` (halved until it fits in memory)."""
    from robustad_bench.adapters import create_detector

    kwargs, epochs = one_epoch(entry.name, entry.kwargs)
    with seeded(0):
        detector = create_detector(entry.name, **kwargs).to(device).eval()
    size, generator = detector.input_size, torch.Generator().manual_seed(0)
    small, large = max(1, min(FIT_PROBE_IMAGES // 2, n_train // 2)), max(2, min(FIT_PROBE_IMAGES, n_train))
    times = {}
    for n in (small, large):  # two sizes: the per-image slope without the fixed part (building, one-off setup)
        train = torch.rand(n, 3, size, size, generator=generator).to(device)
        sync(device)
        start = time.perf_counter()
        detector.fit(train, seed=0)
        sync(device)
        times[n] = time.perf_counter() - start
    slope = max(0.0, (times[large] - times[small]) / (large - small)) if large > small else times[large] / large
    fit_fixed = max(0.0, times[small] - slope * small)
    fit_per_image = slope * epochs
    detector.eval()
    rows = grow_banks(detector, n_train)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while True:
        x = torch.rand(batch_size, 3, size, size, generator=generator).to(device)
        try:
            forward = timed(partial(_forward, detector, x), device, repeats) / batch_size
            gradient = timed(partial(_gradient, detector, x), device, repeats) / batch_size
            break
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Cost(forward, gradient, fit_per_image, batch_size, rows, peak, fit_fixed)


def _forward(detector: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        detector(x)


def _gradient(detector: nn.Module, x: Tensor) -> None:
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(detector(x).score.sum(), x)


@dataclass
class Line:
    """One (detector, attack) row of the projection."""

    detector: str
    attack: str
    cells: int = 0
    images: int = 0
    forward: float = 0.0  # passes per image (target + source)
    gradient: float = 0.0
    seconds: float = 0.0
    unknown: int = 0  # cells without image counts (data not there and nothing published)
    error: str | None = None
    taken: tuple[str, ...] = ()  # a composite's parts that other cells of its groups make (not charged)


def estimate(plan: Plan, device: torch.device, cost_of: Callable[..., Cost] | None = None,
             memo: Path | None = None, share: bool = True) -> tuple[list[Line], dict[str, Cost], dict[str, float]]:
    """Per (detector, attack) projected seconds of the plan's tasks, the costs per detector
    label and the fit seconds per detector label. ``cost_of(entry, batch_size, n_train)`` gives a detector
    entry's cost (default: ``probe`` it on ``device``); ``memo`` (a JSON file) keeps the
    pass counts between runs. ``share=False`` projects the run without the work the harness
    shares (for the before/after figure): every wrapper trains its own base, and a composite
    attack runs every part itself instead of taking those the other cells of its group made."""
    cost_of = cost_of or partial(probe, device=device)
    counts: dict[tuple, Any] = {}
    passes = read_memo(memo)
    costs: dict[str, Cost] = {}
    lines: dict[tuple[str, str], Line] = {}
    taken, by_fit, drawn = {}, defaultdict(list), set()
    for task in plan.tasks:  # the fit groups (an unkeyed plan has no keys: by configuration)
        by_fit[digest(task.fit.config())].append(task)
    for group in by_fit.values():
        names = taken_names([task.cell for task in group]) if share else [()] * len(group)
        taken |= {id(task): found for task, found in zip(group, names)}
    for task in plan.tasks:
        cell = task.cell
        group = (json.dumps(cell.dataset.config(), sort_keys=True, default=str), cell.category)
        if group not in counts:
            counts[group] = plan.dataset(cell.dataset).counts(cell.category)
        count = counts[group]
        for entry in (cell.detector, cell.source) if cell.source is not None else (cell.detector,):
            if entry.label not in costs:
                n_train = count.train if count is not None else FIT_PROBE_IMAGES
                log.info("probing %s on %s", entry.label, device)
                costs[entry.label] = cost_of(entry, batch_size=cell.batch_size, n_train=n_train)
        cost = costs[cell.detector.label]
        key = digest({**cell.attack.config(), "eps": None, "version": __version__,  # passes do not depend on ε
                      **({"taken": list(taken[id(task)])} if taken[id(task)] else {})})
        if key not in passes:
            passes[key] = count_passes(cell, taken=taken[id(task)])
            write_memo(memo, passes)
        p = charged = passes[key]
        if cell.spec.kind == "certificate":  # one set of draws serves every radius of a fit group (certify.py)
            draws = (digest(task.fit.config()), key)  # key: the attack's configuration but ε
            charged = Passes(0.0, 0.0) if draws in drawn else p
            drawn.add(draws)
        line = lines.setdefault((cell.detector.label, cell.attack.label), Line(cell.detector.label, cell.attack.label))
        line.cells += 1
        line.error = line.error or p.error
        line.taken = tuple(sorted(set(line.taken) | set(taken[id(task)])))
        line.forward, line.gradient = p.forward + p.source_forward, p.gradient + p.source_gradient
        if count is None:
            line.unknown += 1
            continue
        n_test = count.test_normal + count.test_anomalous
        source = costs[cell.source.label] if cell.source is not None else cost
        scoring = n_test * cost.forward if cell.spec.perturbs else 0.0  # the adversarial images scored once more
        line.images += n_test
        line.seconds += n_test * (charged.gradient * cost.gradient + charged.forward * cost.forward
                                  + charged.source_gradient * source.gradient + charged.source_forward * source.forward) + scoring
    fits: dict[str, float] = defaultdict(float)
    own = {digest(fit.config()) for task in plan.tasks for fit in (task.fit, task.source) if fit is not None}
    for fit in plan.fits():  # each once, transfer sources and shared bases included
        count = counts[(json.dumps(fit.dataset.config(), sort_keys=True, default=str), fit.category)]
        if count is None or (not share and digest(fit.config()) not in own):  # unshared, a base is trained by its wrapper
            continue
        for entry in (fit.detector, fit.base.detector) if fit.base is not None else (fit.detector,):
            if entry.label not in costs:  # a shared base no cell runs plainly
                costs[entry.label] = cost_of(entry, batch_size=plan.suite.batch_size, n_train=count.train)
        trained = costs[fit.detector.label if fit.base is None else fit.base.detector.label]
        training = 0.0 if fit.base is not None and share else trained.fit_fixed + count.train * trained.fit_per_image
        fits[fit.detector.label] += training + (count.test_normal + count.test_anomalous) * costs[fit.detector.label].forward
    return list(lines.values()), costs, dict(fits)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def report(lines: list[Line], costs: dict[str, Cost], fits: dict[str, float], device: torch.device) -> str:
    from tabulate import tabulate

    rows = [(label, c.batch_size, f"{1000 * c.forward:.2f}", f"{1000 * c.gradient:.2f}", f"{1000 * c.fit_per_image:.1f}",
             c.bank_rows if c.bank_rows is not None else "—",
             f"{c.peak_memory / 2**30:.1f}" if c.peak_memory is not None else "—", hours(fits.get(label, 0.0)))
            for label, c in costs.items()]
    out = [f"probe on {device} ({device_name(device)}): seconds per image measured now",
           tabulate(rows, headers=["detector", "batch", "fwd ms/img", "fwd+bwd ms/img", "fit ms/train img", "bank rows",
                                   "peak GiB", "fits"]), ""]
    table = [(ln.detector, ln.attack + (f" (takes {'+'.join(ln.taken)})" if ln.taken else ""), ln.cells, ln.images, f"{ln.gradient:g}", f"{ln.forward:g}",
              ("n/a: " + ln.error[:60]) if ln.error else hours(ln.seconds) + (f" (+{ln.unknown} cells of unknown size)" if ln.unknown else ""))
             for ln in lines]
    out.append(tabulate(table, headers=["detector", "attack", "cells", "images", "grad passes/img", "fwd-only passes/img", "projected"]))
    total = sum(ln.seconds for ln in lines) + sum(fits.values())
    kind = "GPU" if device.type == "cuda" else "CPU"
    out.append(f"\nprojected: {hours(total)} ({total / 3600:.2f} {kind}-hours on one {device_name(device)}); "
               "attacks from counted passes × measured seconds, fits from a probe at two sizes")
    if any(ln.unknown for ln in lines):
        out.append("some cells have no image counts (the data is not there and nothing is published): not projected")
    return "\n".join(out)
