"""What the scheduler costs and what workers gain.

    python benchmarks/scheduler.py [--cells 1000] [--quick] [--workers 2]

1. Overhead per task: a suite of ``--cells`` trivial cells (a detector that averages pixels,
   the ``noise`` attack at that many budgets, 4 tiny test images per cell) run in process;
   all of the wall time is the harness's own (planning, keys, metrics, calibration, the
   cache and results writes). Target ≤ 20 ms per cell.
2. ``--quick``: the quick suite with ``--workers 1`` and ``--workers N`` from empty caches,
   as subprocesses, and the speed-up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def register_trivial_detector() -> str:
    from robustad_bench.adapters import AnomalyOutput, Detector, register_detector

    class MeanPixel(Detector):
        """Score = mean pixel value; map = the image's grey level. Costs nothing."""

        name, version, input_size = "bench_mean_pixel", "1", 8

        def fit(self, normal_images, *, seed):
            pass

        def forward(self, x):
            maps = x.mean(1)
            return AnomalyOutput(maps.flatten(1).mean(1), maps)

        def features(self, x):
            return x

    register_detector(MeanPixel.name)(MeanPixel)
    return MeanPixel.name


def overhead(cells: int, folder: Path) -> tuple[float, int]:
    from robustad_bench.harness.runner import run_suite
    from robustad_bench.harness.suite import load_suite

    detector = register_trivial_detector()
    budgets = ", ".join(f"{(i + 1) / (10 * cells):.8f}" for i in range(cells))
    suite = folder / "trivial.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: trivial
        seed: 0
        batch_size: 4
        examples: 0
        datasets:
          - {{name: digits, categories: ["0"], image_size: 8, n_train: 4, n_test_normal: 2, n_test_anomalous: 2}}
        detectors:
          - {{name: {detector}}}
        attacks:
          - {{name: noise, eps: [{budgets}]}}
        """))
    start = time.perf_counter()
    report = run_suite(load_suite(suite), out_dir=folder / "out", cache_dir=folder / "cache", device="cpu", progress=False)
    return time.perf_counter() - start, len(report.rows)


def quick(workers: int, folder: Path) -> float:
    cmd = [sys.executable, "-m", "robustad_bench", "run", str(ROOT / "suites" / "quick.yaml"), "--out", str(folder / f"out{workers}"),
           "--cache", str(folder / f"cache{workers}"), "--no-progress", "--workers", str(workers), "--device", "cpu"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="also time the quick suite with --workers 1 and N")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the trivial cells' work is the harness's, not torch's
    with tempfile.TemporaryDirectory(prefix="robustad-sched-") as tmp:
        seconds, rows = overhead(args.cells, Path(tmp))
        print(f"scheduler overhead: {rows} trivial cells in {seconds:.1f} s = {1000 * seconds / rows:.1f} ms per cell "
              "(target ≤ 20 ms; in process, CPU)")
    if args.quick:
        torch.set_num_threads(torch.get_num_threads())
        with tempfile.TemporaryDirectory(prefix="robustad-workers-") as tmp:
            one = quick(1, Path(tmp))
            many = quick(args.workers, Path(tmp))
        print(f"quick suite: --workers 1 {one:.1f} s, --workers {args.workers} {many:.1f} s: {one / many:.2f}× speed-up")


if __name__ == "__main__":
    main()
