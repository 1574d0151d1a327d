"""Paper-scale cost without the data: what the seeds' protocols take on this device.

    python benchmarks/paper_scale.py            # paper settings (a GPU)
    python benchmarks/paper_scale.py --tiny     # tiny configurations and data: CPU, a minute

1. A synthetic stand-in with MVTec AD's shape — its 15 categories with their published
   train / test-good / test-defective counts, 256 px random textures with blob defects and
   exact masks — is written once under the cache in MVTec's layout and read back with the
   ``mvtec`` loader (``--tiny``: 2 categories, 8 / 4 / 4 images, 64 px).
2. Per detector at paper settings (PatchCore WRN-50-2 layer2+3 at 224 with the real 10 %
   coreset; AnomalyDINO ViT-S/14 at 448, 1 shot; ZARND ResNet-18 at 224; PatchGuard
   ViT-S/14 at 224), on the category with the most train images: fit time, forward and
   forward+backward time per image (fp32 and bf16), PGD-k time per image and its overhead
   (PGD-k ÷ (k × forward+backward)), the attack step against backbone forward+backward +
   one bank GEMM, peak GPU memory. PatchGuard's training is timed per step at the seed's
   code's setting (batch 16, PGD-10) in fp32, bf16 and fp32 with joint batches (one PGD over
   the normal and pseudo-anomalous images, one forward of all four groups) and projected to
   300 epochs; ``--patchguard-epochs E`` also trains it E epochs split and joint from the same
   seed and prints each one's time and image AUROC (the speed-up at equal AUROC).
3. A memory-bank detector's search of one batch, before and after: the unproven fp32 GEMM
   the harness used to run, then each proven candidate format (fp32, TF32, bf16, faiss where
   installed) — time, re-ranks, fallbacks, and whether its nearest rows equal the proven fp32
   search's.
4. Each measured detector smoothed (n = 1,000 noisy copies; ``--tiny``: 128): forward, and the
   input gradient of the smoothed score before (every noise chunk's graph rebuilt in the
   backward pass, as autograd's checkpoint does) and after (only the chunks the gradient
   reaches: the median's is one copy's).
5. The projected wall time of ``suites/seeds/patchguard.yaml`` and ``suites/full.yaml`` on
   this device: every cell's passes, counted (``harness/estimate.py``), times the costs
   measured here, plus the fits — before and after each piece of work the harness saves (a
   wrapper adopting its base's fit; a composite attack taking the parts its group's cells
   made; a smoothed gradient rebuilding only the chunks it reaches).

Weights are random (timing does not depend on them). All figures are this device's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from robustad_bench.harness.estimate import one_epoch, sync, timed

ROOT = Path(__file__).resolve().parents[1]

PAPER = {  # the seeds' settings, random weights
    "patchcore": {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "input_size": 224, "coreset_ratio": 0.1},
    "anomalydino": {"backbone": "vit_small_patch14_dinov2", "input_size": 448, "shots": 1},
    "zarnd": {"backbone": "resnet18", "input_size": 224},
    "patchguard": {"backbone": "vit_small_patch14_dinov2", "input_size": 224, "epochs": 300, "batch_size": 16, "train_steps": 10},
}
SUITES = ("suites/seeds/patchguard.yaml", "suites/full.yaml")


# -- the stand-in data ---------------------------------------------------------------------------

def texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """(size, size, 3) smooth random texture in [0, 1]."""
    noise = rng.normal(size=(size, size, 3))
    smooth = ndimage.gaussian_filter(noise, sigma=(sigma, sigma, 0))
    smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-8)
    return 0.25 + 0.5 * smooth


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random connected blob mask covering 1–5 % of the image."""
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 24)
    centre = rng.integers(size // 4, 3 * size // 4, size=2)
    yy, xx = np.mgrid[:size, :size]
    radius = size * rng.uniform(0.06, 0.12)
    return (np.hypot(yy - centre[0], xx - centre[1]) + 0.5 * radius * field / (field.std() + 1e-8)) < radius


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array * 255, 0, 255).astype(np.uint8)).save(path)


def write_category(root: Path, category: str, count, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, sum(map(ord, category))])
    sigma = rng.uniform(1.5, 6.0)
    for i in range(count.train):
        save(root / category / "train" / "good" / f"{i:03d}.png", texture(rng, size, sigma))
    for i in range(count.test_normal):
        save(root / category / "test" / "good" / f"{i:03d}.png", texture(rng, size, sigma))
    for i in range(count.test_anomalous):
        image, mask = texture(rng, size, sigma), blob(rng, size)
        image[mask] = np.clip(image[mask] + rng.uniform(-0.4, 0.4, size=3), 0, 1)
        save(root / category / "test" / "blob" / f"{i:03d}.png", image)
        save(root / category / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask.astype(np.float32))


def write_stand_in(root: Path, counts: dict, size: int, seed: int = 0) -> Path:
    """MVTec's layout under ``root`` with the given counts, one process per category
    (written once: ``done.json`` marks it)."""
    if (root / "done.json").is_file():
        return root
    with ProcessPoolExecutor(max_workers=min(len(counts), os.cpu_count() or 1)) as pool:
        for future in [pool.submit(write_category, root, category, count, size, seed) for category, count in counts.items()]:
            future.result()
    (root / "done.json").write_text(json.dumps({name: [c.train, c.test_normal, c.test_anomalous] for name, c in counts.items()}))
    return root


# -- measurements --------------------------------------------------------------------------------

def gradient_pass(module, x: torch.Tensor, output=lambda out: out.score) -> None:
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(output(module(x)).sum(), x)


@dataclass
class Measured:
    detector: str
    fit: float  # s, on the measured category
    n_train: int
    forward: float  # s / image, fp32
    gradient: float  # s / image, fp32
    gradient_bf16: float
    gradient_large: float  # s / image, fp32, at a 4× larger batch (no number depends on the batch size)
    large_batch: int
    pgd: float  # s / image for PGD-k
    steps: int
    step_vs_parts: float | None  # attack step ÷ (backbone fwd+bwd + one bank GEMM)
    peak_gib: float | None
    batch: int
    search: list = field(default_factory=list)  # a memory-bank detector's search per format (search_formats)
    smoothed: SmoothedCost | None = None  # the detector smoothed (measure_smoothed)

    @property
    def overhead(self) -> float:
        return self.pgd / (self.steps * self.gradient)


def bank_queries(detector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(queries, bank) of a memory-bank detector's search for the images ``x``, or None."""
    from robustad_bench.adapters.knn import MemoryBank

    banks = [m for m in detector.modules() if isinstance(m, MemoryBank)]
    if not banks:
        return None
    with torch.no_grad():
        f = detector.features(x)
    queries = (f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]) if f.dim() == 4 else f).float()
    bank = banks[0].bank
    return (queries, bank) if queries.shape[1] == bank.shape[1] else None


def backbone_and_gemm(detector, x: torch.Tensor, device: torch.device) -> float | None:
    """Seconds per image of the frozen network's forward+backward plus one GEMM of the
    queries against the bank: what one attack step cannot go below."""
    found = bank_queries(detector, x)
    if found is None:
        return None
    queries, bank = found
    net = timed(lambda: gradient_pass(detector.features, x, output=lambda f: f.float().pow(2)), device)
    return (net + timed(lambda: queries @ bank.T, device)) / x.shape[0]


def unproven_nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The search before the proof: one fp32 GEMM of ‖q‖² − 2 q·b + ‖b‖², its arg-min."""
    d = queries.pow(2).sum(1, keepdim=True) - 2 * queries @ bank.T + bank.pow(2).sum(1)
    return d.argmin(1)


def search_formats(detector, x: torch.Tensor, device: torch.device) -> list[tuple[str, float, dict | None, bool]]:
    """(format, seconds per batch, what its queries took, indices equal to the fp32 proven
    search's) for the bank search of one batch: the unproven fp32 GEMM (before) and each
    proven candidate format this machine has (after)."""
    from robustad_bench.adapters.exact_search import FORMATS, SearchStats, prepare, search

    found = bank_queries(detector, x)
    if found is None:
        return []
    queries, bank = found
    index = prepare(bank)
    reference = search(queries, index, 1, precision="fp32")[:, 0]
    out = [("fp32 GEMM, unproven", timed(lambda: unproven_nearest(queries, bank), device), None,
            bool(torch.equal(unproven_nearest(queries, bank), reference)))]
    for name in FORMATS:
        if name == "faiss":
            try:
                import faiss  # noqa: F401
            except ImportError:
                continue
        stats = SearchStats()
        indices = search(queries, index, 1, precision=name, stats=stats)[:, 0]
        seconds = timed(lambda name=name: search(queries, index, 1, precision=name), device)
        out.append((name, seconds, stats.as_dict(), bool(torch.equal(indices, reference))))
    return out


def measure(name: str, config: dict, split, device: torch.device, batch: int, steps: int, smoothed_n: int) -> Measured:
    from robustad_bench.adapters import create_detector
    from robustad_bench.harness.attacks import run_attack
    from robustad_bench.harness.tasks import seeded

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fit_config, epochs = one_epoch(name, config)  # a detector that trains: one epoch timed, scaled by its epochs
    with seeded(0):
        detector = create_detector(name, **fit_config).to(device).eval()
    data = split.resized(detector.input_size)
    train = data.train.to(device)
    sync(device)
    start = time.perf_counter()
    detector.fit(train, seed=0)
    sync(device)
    fit = time.perf_counter() - start
    fit *= epochs
    detector.eval()
    x = data.test[:batch].to(device)
    labels = torch.from_numpy(data.labels[:batch]).to(device)
    forward = timed(lambda: detector(x), device) / x.shape[0]
    gradient = timed(lambda: gradient_pass(detector, x), device) / x.shape[0]
    with seeded(0):
        bf16 = create_detector(name, **fit_config, precision="bf16").to(device).eval()
    bf16.load_state_dict(detector.state_dict(), strict=False)
    gradient_bf16 = timed(lambda: gradient_pass(bf16, x), device) / x.shape[0]
    large = data.test[: 4 * batch].to(device)
    gradient_large = timed(lambda: gradient_pass(detector, large), device, repeats=1) / large.shape[0]
    pgd = timed(partial(run_attack, "pgd", detector, x, labels, eps=8 / 255, steps=steps, threshold=0.0, pixel_threshold=0.0),
                device, repeats=1) / x.shape[0]
    parts = backbone_and_gemm(detector, x, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Measured(name, fit, int(train.shape[0]), forward, gradient, gradient_bf16, gradient_large, large.shape[0], pgd, steps,
                    None if parts is None else (pgd / steps) / parts, peak, x.shape[0], search_formats(detector, x, device),
                    measure_smoothed(name, fit_config, detector, x, device, smoothed_n))


@dataclass
class SmoothedCost:
    n: int
    forward: float  # s / image: n noisy base forwards
    gradient_before: float  # s / image: every chunk's graph rebuilt (autograd's checkpoint)
    gradient_after: float  # s / image: only the chunks the gradient reaches


def checkpointed_gradient(smoothed, x: torch.Tensor) -> None:
    """The smoothed score's input gradient as the harness took it before: each noise chunk
    checkpointed, so every chunk's graph is rebuilt in the backward pass, reached or not."""
    from torch.utils.checkpoint import checkpoint

    from robustad_bench.adapters.smoothed import NOISE_CHUNK

    x = x.clone().requires_grad_(True)
    scores = []
    for image in x.split(1):
        seed = smoothed.image_seed(image)
        chunks = range(math.ceil(smoothed.n / NOISE_CHUNK))
        scores.append(torch.cat([checkpoint(smoothed.chunk_output, image, seed, k, use_reentrant=False).score for k in chunks]))
    torch.autograd.grad(torch.stack(scores).kthvalue(smoothed.rank, dim=1).values.sum(), x)


def measure_smoothed(name: str, config: dict, detector, x: torch.Tensor, device: torch.device, n: int) -> SmoothedCost:
    """A fitted detector smoothed over ``n`` noisy copies (it adopts the fit), timed on one image."""
    from robustad_bench.adapters import create_detector
    from robustad_bench.harness.tasks import seeded

    with seeded(0):
        smoothed = create_detector("smoothed", base={"name": name, **config}, sigma=0.25, n=n)
    smoothed.adopt(detector, seed=0)
    smoothed = smoothed.to(device).eval()
    one = x[:1]
    forward = timed(lambda: smoothed(one), device, repeats=1)
    before = timed(lambda: checkpointed_gradient(smoothed, one), device, repeats=1)
    after = timed(lambda: gradient_pass(smoothed, one), device, repeats=1)
    return SmoothedCost(n, forward, before, after)


TRAINING = {"fp32": {}, "bf16": {"precision": "bf16"}, "fp32 joint": {"joint_batches": True}}  # PatchGuard's step, timed


def patchguard_training(config: dict, split, device: torch.device, steps: int = 2) -> dict[str, float]:
    """Seconds per training step (batch 16 normal + 16 pseudo-anomalous, PGD-10 on both) in
    fp32, bf16 and fp32 with joint batches (one PGD over both, one forward of all four
    groups), and each projected to 300 epochs per category."""
    from robustad_bench.adapters import create_detector
    from robustad_bench.harness.tasks import seeded

    out = {}
    for variant, keys in TRAINING.items():
        with seeded(0):
            detector = create_detector("patchguard", **config, **keys).to(device)
        images = split.resized(detector.input_size).train.to(device)
        batch = min(detector.batch_size, images.shape[0])
        generator = torch.Generator().manual_seed(0)
        saliency = torch.ones(images.shape[0], *images.shape[-2:])  # on the CPU, as training keeps it
        detector.requires_grad_(True)
        optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=detector.lr)
        detector.train()
        step = partial(detector._train_step, images[:batch], saliency[:batch], generator, optimizer)
        out[variant] = timed(step, device, repeats=steps)
        detector.eval()
    steps_per_epoch = math.ceil(split.train.shape[0] / config.get("batch_size", 16))
    epochs = config.get("epochs", 300)
    out |= {f"{v}_300": out[v] * steps_per_epoch * epochs for v in TRAINING}
    return out


def patchguard_auroc(config: dict, split, device: torch.device, epochs: int) -> dict[str, tuple[float, float]]:
    """(seconds, image AUROC on the stand-in's test set) of PatchGuard trained ``epochs`` epochs
    on the category, split (the default) and with joint batches, the same seed: the speed-up
    and whether it keeps the AUROC."""
    from sklearn.metrics import roc_auc_score

    from robustad_bench.adapters import create_detector
    from robustad_bench.harness.tasks import seeded

    out = {}
    for variant, joint in (("split", False), ("joint", True)):
        with seeded(0):
            detector = create_detector("patchguard", **{**config, "epochs": epochs, "joint_batches": joint}).to(device)
        data = split.resized(detector.input_size)
        sync(device)
        start = time.perf_counter()
        detector.fit(data.train.to(device), seed=0)
        sync(device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            scores = torch.cat([detector(data.test[i : i + 32].to(device)).score.cpu() for i in range(0, data.test.shape[0], 32)])
        out[variant] = (seconds, float(roc_auc_score(data.labels, scores.numpy())))
    return out


# -- projections ---------------------------------------------------------------------------------

@dataclass
class Projection:
    attacks: float  # s: every cell's passes
    fits: float  # s: every fit and its clean scoring
    attacks_unshared: float  # the same, each composite attack running every part itself
    attacks_checkpointed: float  # shared, a smoothed gradient rebuilding every noise chunk
    fits_unshared: float  # each wrapper training its own base
    cells: int
    unknown: int  # cells of unknown size
    unmeasured: int  # cells of detectors not measured here
    top: list = field(default_factory=list)  # the (detector, attack) lines of the most hours, after


def project(suite_file: Path, measured: dict[str, Measured], device: torch.device, memo: Path) -> Projection:
    """A suite's projected seconds with the measured costs, with and without the work the
    harness shares (adopted fits, recalled attack parts)."""
    from dataclasses import replace

    from robustad_bench.harness.estimate import estimate
    from robustad_bench.harness.plan import make_plan
    from robustad_bench.harness.suite import load_suite

    plan = make_plan(load_suite(suite_file, deep=False), keyed=False)  # the cells, without the data
    every = plan.tasks
    tasks = tuple(t for t in every if measured_name(t.fit.detector) in measured
                  and (t.source is None or measured_name(t.source.detector) in measured))
    figures, after = [], []
    for share, checkpointed in ((True, False), (False, True), (True, True)):
        cost_of = partial(measured_cost, measured, checkpointed=checkpointed)
        lines, _, fits = estimate(replace(plan, tasks=tasks), device, cost_of=cost_of, memo=memo, share=share)
        figures += [sum(ln.seconds for ln in lines), sum(fits.values())]
        after = after or lines
    attacks, fits, attacks_unshared, fits_unshared, attacks_checkpointed, _ = figures
    return Projection(attacks=attacks, fits=fits, attacks_unshared=attacks_unshared, fits_unshared=fits_unshared,
                      attacks_checkpointed=attacks_checkpointed, cells=len(every),
                      unknown=sum(ln.unknown for ln in lines), unmeasured=len(every) - len(tasks),
                      top=sorted(after, key=lambda ln: -ln.seconds)[:8])


def measured_name(entry) -> str:
    """The detector an entry's cost was measured on: a smoothed entry's base."""
    return entry.kwargs["base"]["name"] if entry.name == "smoothed" else entry.name


def measured_cost(measured: dict[str, Measured], entry, batch_size: int, n_train: int, checkpointed: bool = False):
    """An entry's ``Cost`` from the measurements (a smoothed entry: its base smoothed, its
    forward and gradient scaled from the measured n to the entry's)."""
    from robustad_bench.harness.estimate import Cost

    m = measured[measured_name(entry)]
    if entry.name != "smoothed":
        return Cost(m.forward, m.gradient, m.fit / m.n_train, batch_size, None, None)
    s, scale = m.smoothed, entry.kwargs.get("n", 1000) / m.smoothed.n
    return Cost(s.forward * scale, (s.gradient_before if checkpointed else s.gradient_after) * scale,
                m.fit / m.n_train, batch_size, None, None)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    from robustad_bench.adapters import DETECTORS
    from robustad_bench.harness.cli import default_cache
    from robustad_bench.harness.datasets import DATASETS
    from robustad_bench.harness.datasets.base import Counts
    from robustad_bench.harness.datasets.mvtec import MVTEC_AD
    from robustad_bench.harness.estimate import device_name
    from robustad_bench.harness.runner import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configurations and data (CPU, about a minute)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", help="where the stand-in data goes (default: the robustad-bench cache)")
    parser.add_argument("--batch", type=int, default=32, help="images per timed batch (default 32; --tiny 4)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps timed (projected linearly to 1000)")
    parser.add_argument("--smoothed-n", type=int, help="noisy copies of the smoothed detectors timed (default 1000; --tiny 128)")
    parser.add_argument("--patchguard-epochs", type=int, default=0,
                        help="also train PatchGuard this many epochs split and with joint batches: time and AUROC of each")
    parser.add_argument("--detectors", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--suites", nargs="+", default=list(SUITES), help=f"suites to project (default: {' '.join(SUITES)})")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    size, counts = (64, {c: Counts(8, 4, 4) for c in ("bottle", "hazelnut")}) if args.tiny else (256, MVTEC_AD)
    batch, steps = (4, 2) if args.tiny else (args.batch, args.steps)
    smoothed_n = args.smoothed_n or (128 if args.tiny else 1000)
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    root = cache / "data" / ("paper_scale_tiny" if args.tiny else "paper_scale")
    start = time.perf_counter()
    write_stand_in(root, counts, size)
    print(f"stand-in: {len(counts)} categories in MVTec AD's layout, {size} px, "
          f"{sum(c.train + c.test_normal + c.test_anomalous for c in counts.values())} images under {root} "
          f"({time.perf_counter() - start:.0f} s)")
    category = max(counts, key=lambda c: counts[c].train)
    split = DATASETS.get("mvtec")(root=root, categories=[category], image_size=size).load(category, seed=0, data_dir=cache / "data")
    configs = {name: (DETECTORS.get(name).tiny if args.tiny else PAPER[name]) for name in args.detectors}
    print(f"device: {device} ({device_name(device)}); measured on '{category}' ({split.train.shape[0]} train, "
          f"{split.test.shape[0]} test); {'TINY configurations' if args.tiny else 'paper settings'}, random weights\n")
    measured = {}
    for name, config in configs.items():
        measured[name] = measure(name, config, split, device, batch, steps, smoothed_n)
        print(f"  measured {name}", file=sys.stderr)
    header = (f"{'detector':<12} {'fit s':>8} {'fwd ms':>8} {'f+b ms':>8} {'f+b bf16':>9} {'bf16 ×':>7} {'f+b ×4 batch':>13} "
              f"{f'PGD-{steps} ms':>11} {'overhead':>9} {'step/parts':>11} {'peak GiB':>9} {'PGD-1000, MVTec':>16}")
    print(header)
    test_images = sum(c.test_normal + c.test_anomalous for c in counts.values())
    for m in measured.values():
        pgd1000 = m.pgd / m.steps * 1000 * test_images
        print(f"{m.detector:<12} {m.fit:8.1f} {1000 * m.forward:8.2f} {1000 * m.gradient:8.2f} {1000 * m.gradient_bf16:9.2f} "
              f"{m.gradient / m.gradient_bf16:7.2f} {f'{1000 * m.gradient_large:.2f} @{m.large_batch}':>13} "
              f"{1000 * m.pgd:11.1f} {m.overhead:9.3f} "
              f"{'—' if m.step_vs_parts is None else f'{m.step_vs_parts:.2f}':>11} "
              f"{'—' if m.peak_gib is None else f'{m.peak_gib:.1f}':>9} {hours(pgd1000):>16}")
    print(f"\n(ms per image at a batch of {batch}; f+b ×4 batch: fwd+bwd per image at up to 4× that batch — a suite's "
          "batch_size changes no number, only the speed; "
          f"fit: on '{category}'; PatchGuard's: one epoch timed × epochs. overhead: PGD-{steps} ÷ ({steps} × fwd+bwd), "
          "target ≤ 1.05; step/parts: one attack step ÷ (backbone fwd+bwd + one bank GEMM), target ≤ 1.3; "
          f"PGD-1000, MVTec: per-image PGD time × 1000/{steps} × {test_images} test images)")
    for m in measured.values():
        rows = m.search
        if rows:
            print(f"\n{m.detector} bank search, one batch of {batch} images (before: one fp32 GEMM, unproven; after: a "
                  "candidate pass with a proof per query, exact):")
            print(f"{'format':<22} {'ms':>9} {'× before':>9} {'re-ranked':>10} {'→ fp32':>7} {'→ all rows':>10} {'exact':>6}")
            for name, seconds, stats, same in rows:
                stats = stats or {}
                print(f"{name:<22} {1000 * seconds:9.2f} {rows[0][1] / seconds:9.2f} {stats.get('reranked', '—'):>10} "
                      f"{stats.get('fallback_fp32', '—'):>7} {stats.get('fallback_exhaustive', '—'):>10} "
                      f"{'yes' if same else 'NO':>6}")
            print("(exact: the same nearest rows as the proven fp32 search; the unproven GEMM's 'NO' is the error "
                  "the proof removes)")
    print(f"\nsmoothed (n = {smoothed_n} noisy copies, one image): the smoothed score's input gradient before (every "
          "chunk of 64 copies rebuilt in the backward pass) and after (only the chunks the gradient reaches):")
    print(f"{'detector':<12} {'fwd s':>8} {'grad before s':>14} {'grad after s':>13} {'×':>6}")
    for m in measured.values():
        c = m.smoothed
        print(f"{m.detector:<12} {c.forward:8.2f} {c.gradient_before:14.2f} {c.gradient_after:13.2f} "
              f"{c.gradient_before / c.gradient_after:6.2f}")
    if "patchguard" in configs:
        config = configs["patchguard"]
        t = patchguard_training(config, split, device, steps=1 if args.tiny else 2)
        print(f"\nPatchGuard training step (batch {config.get('batch_size', 16)}, PGD-{config.get('train_steps', 10)} on "
              f"normal and pseudo-anomalous) and {config.get('epochs', 300)} epochs on '{category}':")
        for variant in TRAINING:
            print(f"  {variant:<11} {t[variant]:7.2f} s/step ({t['fp32'] / t[variant]:.2f}× fp32) {hours(t[variant + '_300']):>9}")
    print()
    for suite in args.suites:
        p = project(ROOT / suite, measured, device, cache / "passes.json")
        note = f" ({p.unknown} cells of unknown size left out)" if p.unknown else ""
        note += f" ({p.unmeasured} cells of detectors not measured here left out)" if p.unmeasured else ""
        before, after = p.attacks_unshared + p.fits_unshared, p.attacks + p.fits
        print(f"projected wall time of {suite}: {hours(after)} for {p.cells} cells on one {device_name(device)}{note}\n"
              f"  fits {hours(p.fits_unshared)} → {hours(p.fits)} (a wrapper adopts its base's fit)\n"
              f"  attacks {hours(p.attacks_unshared)} → {hours(p.attacks_checkpointed)} (a composite takes the parts its "
              f"group made) → {hours(p.attacks)} (a smoothed gradient rebuilds only the chunks it reaches)\n"
              f"  total {hours(before)} → {hours(after)} ({before / max(after, 1e-9):.2f}×); where the hours go:")
        for ln in p.top:
            print(f"    {ln.detector:<34} {ln.attack:<18} {ln.cells:>5} cells {ln.images:>9} images "
                  f"{ln.gradient:>6g} grad + {ln.forward:>6g} fwd passes/img {hours(ln.seconds):>9} "
                  f"({100 * ln.seconds / max(p.attacks, 1e-9):.0f} % of the attacks)")
    if "patchguard" in configs and args.patchguard_epochs:  # last: the longest, and the projections are out already
        a = patchguard_auroc(configs["patchguard"], split, device, args.patchguard_epochs)
        print(f"\nPatchGuard trained {args.patchguard_epochs} epochs on '{category}', same seed: split {hours(a['split'][0])}, "
              f"image AUROC {a['split'][1]:.4f}; joint batches {hours(a['joint'][0])}, image AUROC {a['joint'][1]:.4f} "
              f"({a['split'][0] / a['joint'][0]:.2f}× faster, ΔAUROC {a['joint'][1] - a['split'][1]:+.4f})")
    if args.tiny:
        print("(tiny configurations: the projection shows the machinery, not the papers' sizes; run without --tiny on a GPU)")


if __name__ == "__main__":
    main()
