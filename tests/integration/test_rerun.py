"""A rerun of an unchanged, complete run ends at once without loading torch; any change to
what the cells depend on takes the full path again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from robustad_bench.harness.cli import main

PROBE = """
import sys
from robustad_bench.harness.cli import main
code = main(sys.argv[1:])
print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_NOT_LOADED")
sys.exit(code)
"""


def rerun(suite: Path, out: Path, cache: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, "run", str(suite), "--out", str(out), "--cache", str(cache),
                           "--no-progress", *extra], capture_output=True, text=True, check=True)
    return done.stdout


def test_an_unchanged_complete_run_is_not_loaded_again(tiny_suite, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    suite = tiny_suite.read_text()
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress", "--only", "*brick*"]) == 0
    assert "TORCH_LOADED" in rerun(tiny_suite, out, cache)  # --only: not complete, so the full path checks it
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    fast = rerun(tiny_suite, out, cache)
    assert "nothing changed" in fast and "TORCH_NOT_LOADED" in fast and "8 already done" in fast
    assert "TORCH_LOADED" in rerun(tiny_suite, out, cache, "--force")
    assert "TORCH_NOT_LOADED" in rerun(tiny_suite, out, cache)  # --force recomputed and stamped again
    for change in ("suite", "results", "site"):
        if change == "suite":
            tiny_suite.write_text(suite + "\n# a comment changes the file\n")
        elif change == "results":
            with open(out / "results.jsonl", "a") as f:
                f.write("")
            (out / "results.jsonl").touch()
        else:
            (out / "site" / "index.html").unlink()
        slow = rerun(tiny_suite, out, cache)
        assert "TORCH_LOADED" in slow and "nothing changed" not in slow, change
        assert "TORCH_NOT_LOADED" in rerun(tiny_suite, out, cache), change  # the full path stamped it again


def test_a_change_in_a_dataset_root_takes_the_full_path(tmp_path):
    from robustad_bench.harness.complete import finished_rows, record

    root = tmp_path / "mvtec"
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    (root / "bottle" / "train" / "good" / "000.png").write_bytes(b"x")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndatasets:\n  - {{name: mvtec, root: {root}}}\n")
    out = tmp_path / "out"
    (out / "site").mkdir(parents=True)
    for name in ("results.jsonl", "leaderboard.md", "site/index.html"):
        (out / name).write_text("")
    record(suite, out, 3)
    assert finished_rows(suite, out) == 3
    (root / "bottle" / "train" / "good" / "001.png").write_bytes(b"y")  # a new image: the fit keys change
    assert finished_rows(suite, out) is None
