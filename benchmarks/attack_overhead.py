"""The harness's attack overhead: PGD-10 time ÷ (10 × one forward+backward of the detector).

    python benchmarks/attack_overhead.py [--suite suites/quick.yaml] [--detector patchcore-r18] [--device cpu|cuda]

The floor of an attack step is one forward + one backward of the detector (DESIGN §7).
Fits the suite's detector on the first dataset's first category, then, on one batch of the
suite's batch size, times (1) the input gradient of the summed score, the bare floor, and
(2) the registered ``pgd`` attack with 10 steps called as the harness calls it (through
the pass-counting wrapper). Prints both and their ratio (target ≤ 1.2). Medians of
``--repeats`` alternating runs after one warm-up, measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robustad_bench.adapters import create_detector
from robustad_bench.harness.attacks import run_attack
from robustad_bench.harness.grid import build_dataset
from robustad_bench.harness.suite import load_suite
from robustad_bench.harness.tasks import CountingDetector, seeded


def interleaved(fns, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each function, timed in alternation so that both see the same noise
    (other processes, clock changes); one warm-up round first."""
    samples = [[] for _ in fns]
    for i in range(repeats + 1):
        for fn, out in zip(fns, samples):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                out.append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"))
    parser.add_argument("--detector", default="patchcore-r18", help="label of a detector entry of the suite")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    suite = load_suite(args.suite, deep=False)
    entry = next(e for e in suite.detectors if e.label == args.detector)
    dataset = build_dataset(suite.datasets[0])
    category = dataset.categories[0]
    split = dataset.load(category, seed=0, data_dir=Path(tempfile.mkdtemp(prefix="robustad-bench-data-")))
    with seeded(0):
        detector = create_detector(entry.name, **entry.kwargs)
    detector.set_category(category)
    detector.to(device).eval()
    split = split.resized(detector.input_size)
    detector.fit(split.train.to(device), seed=0)
    x = split.test[: suite.batch_size].to(device)
    labels = torch.from_numpy(split.labels[: suite.batch_size]).to(device)

    def forward_backward():  # the floor, in a loop of as many steps as the attack takes
        for _ in range(args.steps):
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(detector(xg).score.sum(), xg)

    def attack():
        run_attack("pgd", CountingDetector(detector), x, labels, eps=8 / 255, steps=args.steps, threshold=0.0, pixel_threshold=0.0)

    loop, pgd = interleaved([forward_backward, attack], args.repeats, device)
    floor = loop / args.steps
    print(f"{entry.label} at {detector.input_size} px, batch {x.shape[0]}, {device}:")
    print(f"  one forward+backward of the detector: {1e3 * floor:8.1f} ms")
    print(f"  PGD-{args.steps} through the harness:        {1e3 * pgd:8.1f} ms")
    print(f"  PGD-{args.steps} ÷ ({args.steps} × forward+backward): {pgd / (args.steps * floor):.3f}  (target ≤ 1.2)")


if __name__ == "__main__":
    main()
