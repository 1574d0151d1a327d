"""Per-detector cost at a suite's sizes: fit time, forward and forward+backward per image.

    python benchmarks/detectors.py [--suite suites/quick.yaml] [--device cpu|cuda] [--category brick]
    python benchmarks/detectors.py --suite suites/seeds/patchguard.yaml --embedded --set weights=random \
        --set cam_weights=random --set epochs=1      # paper sizes, without the datasets or the hub

Each detector entry of the suite is built as the suite builds it and fitted on the first
dataset's ``--category`` (its real train split, resized to the detector's input); then
the test split is scored in the suite's batch size, once without gradient (forward) and
once with the input gradient of the summed score (forward + backward: one attack step).
Timings are medians over ``--repeats`` passes after one warm-up pass. ``--embedded`` uses
the generated textures instead of the suite's datasets; ``--set KEY=VALUE`` overrides a
detector argument wherever the detector takes it (timings do not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from robustad_bench.adapters import DETECTORS, create_detector
from robustad_bench.core.schema import parameters
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.grid import build_dataset
from robustad_bench.harness.suite import load_suite
from robustad_bench.harness.tasks import seeded


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image(step, images: torch.Tensor, batch_size: int, device: torch.device, repeats: int) -> float:
    """Median seconds per image of ``step(batch)`` over the whole of ``images``."""
    times = []
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        for s in range(0, images.shape[0], batch_size):
            step(images[s : s + batch_size].to(device))
        sync(device)
        if i:  # the first pass warms up (allocators, faiss index, cuDNN autotuning)
            times.append((time.perf_counter() - start) / images.shape[0])
    return statistics.median(times)


def forward_backward(detector, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(detector(x).score.sum(), x)
    assert torch.isfinite(grad).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--category", default=None, help="category of the suite's first dataset (default: its first)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", help="data folder (default: a temporary one)")
    parser.add_argument("--embedded", action="store_true", help="time on the generated textures, not the suite's data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a detector argument")
    args = parser.parse_args()
    device = torch.device(args.device)
    suite = load_suite(args.suite, deep=False)
    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
    dataset = DATASETS.get("textures")() if args.embedded else build_dataset(suite.datasets[0])
    category = args.category or dataset.categories[0]
    data_dir = Path(args.data or tempfile.mkdtemp(prefix="robustad-bench-data-"))
    split = dataset.load(category, seed=suite.seeds[0], data_dir=data_dir)
    print(f"suite {suite.name}, {dataset.name}/{category}: {split.train.shape[0]} train, "
          f"{split.test.shape[0]} test images; device {device}, {torch.get_num_threads()} threads\n")
    print(f"{'detector':<22} {'input':>5} {'fit s':>8} {'fwd ms/img':>11} {'fwd+bwd ms/img':>15} {'ratio':>6}")
    for entry in suite.detectors:
        accepted = parameters(DETECTORS.get(entry.name))
        kwargs = entry.kwargs | {k: v for k, v in overrides.items() if k in accepted}
        with seeded(suite.seeds[0]):
            detector = create_detector(entry.name, **kwargs)
        detector.set_category(category)
        detector.to(device).eval()
        data = split.resized(detector.input_size)
        sync(device)
        start = time.perf_counter()
        detector.fit(data.train.to(device), seed=suite.seeds[0])
        sync(device)
        fit = time.perf_counter() - start
        with torch.no_grad():
            fwd = per_image(detector, data.test, suite.batch_size, device, args.repeats)
        fwd_bwd = per_image(partial(forward_backward, detector), data.test, suite.batch_size, device, args.repeats)
        print(f"{entry.label:<22} {detector.input_size:>5} {fit:>8.2f} {1e3 * fwd:>11.2f} {1e3 * fwd_bwd:>15.2f} {fwd_bwd / fwd:>6.2f}")


if __name__ == "__main__":
    main()
