"""The quick suite as a new user runs it: wall time from an empty cache (target ≤ 300 s on 2
CPU cores), an immediate rerun (target ≤ 1 % of the first), where the time goes (per
detector: fit, and attack time per attack), and the cache's size (target ≤ 150 MB, fit
artifacts ≤ 30 MB).

    python benchmarks/quick_suite.py [--suite suites/quick.yaml] [--keep DIR]

Runs the CLI in subprocesses (imports included, as a user sees it) with a fresh cache and
output folder, then again with both kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def timed_run(suite: str, out: Path, cache: Path) -> float:
    cmd = [sys.executable, "-m", "robustad_bench", "run", suite, "--out", str(out), "--cache", str(cache), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def breakdown(rows: list[dict]) -> list[tuple[str, float, dict[str, float]]]:
    """(detector, fit seconds over its categories, attack → seconds over its cells)."""
    fits: dict[str, float] = defaultdict(float)
    attacks: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen = set()
    for row in rows:
        group = (row["detector"], row["dataset"], row["category"])
        if group not in seen:
            seen.add(group)
            fits[row["detector"]] += row.get("fit_seconds", 0.0)
        attacks[row["detector"]][row["attack_label"]] += row.get("seconds", 0.0)
    return [(d, fits[d], dict(attacks[d])) for d in fits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(Path(__file__).resolve().parents[1] / "suites" / "quick.yaml"))
    parser.add_argument("--keep", help="folder for the run and cache (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="robustad-quick-"))
    out, cache = root / "out", root / "cache"
    first = timed_run(args.suite, out, cache)
    rerun = timed_run(args.suite, out, cache)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    print(f"{'detector':<22} {'fit s':>7}  attack s")
    for detector, fit, attacks in breakdown(rows):
        per_attack = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(attacks.items()) if seconds)
        print(f"{detector:<22} {fit:7.1f}  {sum(attacks.values()):6.1f} ({per_attack})")
    fit_mb, total_mb = folder_mb(cache / "fit"), folder_mb(cache)
    print(f"quick suite, first run (data generation + fit + attacks): {first:8.1f} s  (target ≤ 300 s on 2 cores)")
    print(f"quick suite, immediate rerun (cached):                    {rerun:8.1f} s")
    print(f"rerun / first run: {100 * rerun / first:.2f} %  (target ≤ 1 %)")
    print(f"cache: {total_mb:.1f} MB in all (target ≤ 150 MB), fit artifacts {fit_mb:.1f} MB (target ≤ 30 MB)")
    print(f"results: {out / 'results.jsonl'}")


if __name__ == "__main__":
    main()
