"""Nightly benchmark: run a suite, compare with the last published results, publish the site.

    python ci/nightly.py suites/quick.yaml --published public/ [--tolerance 0.02]

``public/`` holds the last published ``results.jsonl``; after the run it receives the new
``results.jsonl``, ``leaderboard.md``, ``changes.md`` (what moved since the last
publication) and the static site. Cells are matched by what they measure (detector,
dataset, category, attack, norm, ε, steps, seed), so a renamed cell id is not a change.
Exits with the run's exit code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

MATCH = ("detector", "dataset", "category", "attack", "norm", "eps", "steps", "task", "seed")


def read(path: Path) -> dict[tuple, dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {tuple(r.get(k) for k in MATCH): r for r in rows if r.get("status") == "ok"}


def compare(old: dict[tuple, dict], new: dict[tuple, dict], tolerance: float) -> list[str]:
    lines = []
    for key in sorted(new.keys() - old.keys(), key=str):
        lines.append(f"| new | {new[key]['cell_id']} | | | |")
    for key in sorted(old.keys() - new.keys(), key=str):
        lines.append(f"| gone | {old[key]['cell_id']} | | | |")
    for key in sorted(new.keys() & old.keys(), key=str):
        for metric, value in sorted(new[key]["metrics"].items()):
            before = old[key]["metrics"].get(metric)
            if value is not None and before is not None and abs(value - before) > tolerance:
                lines.append(f"| changed | {new[key]['cell_id']} | {metric} | {before:.4f} | {value:.4f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--published", required=True, help="folder of the last publication (updated in place)")
    parser.add_argument("--out", default="runs/nightly")
    parser.add_argument("--tolerance", type=float, default=0.02, help="metric change worth reporting")
    args = parser.parse_args()
    published, out = Path(args.published), Path(args.out)
    code = subprocess.call([sys.executable, "-m", "robustad_bench.harness.cli", "run", args.suite, "--out", str(out), "--no-progress"])
    if not (out / "results.jsonl").is_file():
        return code or 1
    changes = compare(read(published / "results.jsonl"), read(out / "results.jsonl"), args.tolerance)
    published.mkdir(parents=True, exist_ok=True)
    report = ["# Changes since the last publication", "", f"tolerance {args.tolerance}", ""]
    report += ["| what | cell | metric | before | now |", "|---|---|---|---|---|", *changes] if changes else ["No changes."]
    (published / "changes.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    subprocess.check_call([sys.executable, "-m", "robustad_bench.harness.cli", "render", str(out), "--site", str(published)])
    for name in ("results.jsonl", "leaderboard.md"):
        shutil.copyfile(out / name, published / name)
    return code


if __name__ == "__main__":
    sys.exit(main())
