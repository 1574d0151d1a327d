"""A rerun of an unchanged, complete run ends at once without loading torch; any change to
what the cells depend on takes the full path again."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    for change in ("suite", "results", "site", "scores-deleted", "scores-garbage", "cells-deleted"):
        victim = next((out / "cells").glob("*/scores.npz"))
        if change == "suite":
            tiny_suite.write_text(suite + "\n# a comment changes the file\n")
        elif change == "scores-deleted":
            victim.unlink()
        elif change == "scores-garbage":
            victim.write_bytes(b"garbage")
        elif change == "cells-deleted":
            shutil.rmtree(out / "cells")
        elif change == "results":
            with open(out / "results.jsonl", "a") as f:
                f.write("")
            (out / "results.jsonl").touch()
        else:
            (out / "site" / "index.html").unlink()
        slow = rerun(tiny_suite, out, cache)
        assert "TORCH_LOADED" in slow and "nothing changed" not in slow, change
        assert "TORCH_NOT_LOADED" in rerun(tiny_suite, out, cache), change  # the full path stamped it again
        assert all(np.load(f)["scores"].size for f in (out / "cells").glob("*/scores.npz")), change  # restored
        assert len(list((out / "cells").glob("*/scores.npz"))) == 8, change


def test_arguments_are_checked_before_the_completion_fast_path(tiny_suite, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress", "--only", "*digits*"]) == 0
    (tmp_path / "a-file").write_text("x")
    from robustad_bench.harness.complete import stamp_complete

    stamp_complete(tiny_suite, out, 3, {})  # as if the whole suite had completed: the fast path would answer
    cases = [("--device", "tpu", "not a device"), ("--backend", "nope", "unknown backend"), ("--cache", str(tmp_path / "a-file"), "is a file")]
    if not __import__("torch").cuda.is_available():
        cases.append(("--device", "cuda", "CUDA is not available"))
    for flag, value, phrase in cases:
        argv = ["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress", flag, value]
        if flag == "--cache":
            argv = ["run", str(tiny_suite), "--out", str(out), "--no-progress", flag, value]
        assert main(argv) == 2, (flag, value)
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tiny_suite), "--out", str(out), "--workers", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_change_in_a_dataset_root_takes_the_full_path(tmp_path):
    from robustad_bench.harness.complete import finished_rows, stamp_complete

    root = tmp_path / "mvtec"
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    (root / "bottle" / "train" / "good" / "000.png").write_bytes(b"x")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndatasets:\n  - {{name: mvtec, root: {root}}}\n")
    out = tmp_path / "out"
    (out / "site").mkdir(parents=True)
    for name in ("results.jsonl", "leaderboard.md", "site/index.html"):
        (out / name).write_text("")
    stamp_complete(suite, out, 3, {})
    assert finished_rows(suite, out) == 3
    (root / "bottle" / "train" / "good" / "001.png").write_bytes(b"y")  # a new image: the fit keys change
    assert finished_rows(suite, out) is None


def test_the_stamp_answers_only_while_every_cell_of_the_plan_has_its_row(tiny_suite, tmp_path):
    """The stamp records the plan (cell id → key); a cell whose finished row is missing or of
    another key sends the rerun down the full path."""
    from robustad_bench.harness.complete import finished_keys, finished_rows, stamp_complete

    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    plan = finished_keys(out)
    assert finished_rows(tiny_suite, out) == len(plan) > 0
    cell = sorted(plan)[0]
    stamp_complete(tiny_suite, out, len(plan), {**plan, cell: "0" * 64})  # the plan asked for another key
    assert finished_rows(tiny_suite, out) is None
    stamp_complete(tiny_suite, out, len(plan), {**plan, "a-cell-without-a-row": plan[cell]})
    assert finished_rows(tiny_suite, out) is None
    stamp_complete(tiny_suite, out, len(plan), plan)
    assert finished_rows(tiny_suite, out) == len(plan)
