"""Wall time of the quick suite from scratch, and of an immediate rerun (target: < 5%).

    python benchmarks/quick_suite.py [--suite suites/quick.yaml] [--keep DIR]

Runs the CLI in subprocesses (imports included, as a user sees it) with a fresh cache
and output folder, then again with both kept. Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(suite: str, out: Path, cache: Path) -> float:
    cmd = [sys.executable, "-m", "robustad_bench.harness.cli", "run", suite, "--out", str(out), "--cache", str(cache), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"))
    parser.add_argument("--keep", help="folder for the run and cache (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robustad-quick-"))
    out, cache = root / "out", root / "cache"
    first = timed_run(args.suite, out, cache)
    rerun = timed_run(args.suite, out, cache)
    print(f"quick suite, first run (data generation + fit + attacks): {first:8.1f} s")
    print(f"quick suite, immediate rerun (cached):                    {rerun:8.1f} s")
    print(f"rerun / first run: {100 * rerun / first:.1f}%  (target < 5%)")
    print(f"results: {out / 'results.jsonl'}")


if __name__ == "__main__":
    main()
