"""Atomic writes, corrupt cache files, and interrupted results files."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest

from robustad_bench.core.errors import UserError
from robustad_bench.harness.cache import Cache, read_npz
from robustad_bench.harness.results import (
    OutputLock,
    ResultStore,
    cell_scores,
    claim_folder,
)
from robustad_bench.harness.rows import arrays_sha256, read_rows


def test_eval_round_trip(tmp_path):
    cache = Cache(tmp_path)
    arrays = {"labels": np.array([0, 1]), "scores": np.array([0.1, 0.9], np.float32)}
    cache.save_eval("ab" * 32, ROW | {"scores_sha256": arrays_sha256(arrays)}, arrays)
    row, loaded = cache.load_eval("ab" * 32)
    assert row["cell_id"] == "x" and np.array_equal(loaded["scores"], arrays["scores"])
    assert cache.load_eval("cd" * 32) is None
    assert not list(tmp_path.rglob(".*.npz.*"))  # no temporary files left


ROW = {"cell_id": "x", "status": "ok", "suite": "s", "detector": "d", "dataset": "t", "category": "c", "attack": "none",
       "eps": 0.0, "metrics": {"image_auroc": 1.0}}


@pytest.mark.parametrize("damage", ["empty-object", "list", "another-cells-arrays"])
def test_a_cached_cell_that_is_not_a_whole_row_with_its_own_arrays_is_computed_again(damage, tmp_path, caplog):
    cache = Cache(tmp_path)
    arrays = {"labels": np.array([0, 1]), "scores": np.array([0.1, 0.9], np.float32)}
    cache.save_eval("ab" * 32, ROW | {"scores_sha256": arrays_sha256(arrays)}, arrays)
    folder = next(p.parent for p in tmp_path.rglob("row.json"))
    if damage == "empty-object":
        (folder / "row.json").write_text("{}")
    elif damage == "list":
        (folder / "row.json").write_text("[]")
    else:  # a valid scores file, but another cell's
        other = {"labels": np.array([0, 1]), "scores": np.array([0.9, 0.1], np.float32)}
        cache.save_eval("cd" * 32, ROW, other)
        (folder / "scores.npz").write_bytes(next(p for p in tmp_path.rglob("scores.npz") if p.parent != folder).read_bytes())
    assert cache.load_eval("ab" * 32) is None
    assert "computing it again" in caplog.text


def test_a_corrupt_cache_file_is_named_and_computed_again(tmp_path, caplog):
    cache = Cache(tmp_path)
    cache.save_fit("ef" * 32, {"a": 1})
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"not a checkpoint")
    assert cache.load_fit("ef" * 32) is None  # a miss, not a stop: the run computes it again
    assert str(path) in caplog.text
    cache.save_eval("ab" * 32, ROW, {"labels": np.zeros(2, int), "scores": np.zeros(2)})
    next(tmp_path.rglob("scores.npz")).write_bytes(b"garbage")
    assert cache.load_eval("ab" * 32) is None and "scores.npz" in caplog.text


def test_corrupt_npz_names_the_file(tmp_path):
    bad = tmp_path / "scores.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="scores.npz"):
        read_npz(bad)


def ok_row(cell_id, n=2, suite="s"):
    return {"cell_id": cell_id, "status": "ok", "config_hash": "h", "n_normal": n - 1, "n_anomalous": 1, "suite": suite,
            "detector": "d", "dataset": "t", "category": "c", "attack": "none", "eps": 0.0, "metrics": {}}


def test_truncated_last_line_is_skipped_and_finalize_rewrites(tmp_path):
    store = ResultStore(tmp_path)
    store.add(ok_row("a"), {"labels": np.zeros(2, int), "scores": np.zeros(2)})
    with open(store.path, "a") as f:
        f.write('{"cell_id": "b", "sta')  # a kill in the middle of a write
    again = ResultStore(tmp_path)
    assert list(again.rows) == ["a"] and again.done("a", "h") and not again.done("a", "other")
    again.finalize(["a", "zzz"], "s")
    assert [json.loads(line)["cell_id"] for line in store.path.read_text().splitlines()] == ["a"]


def test_a_row_after_a_torn_one_starts_on_a_fresh_line(tmp_path, caplog):
    store = ResultStore(tmp_path)
    store.add(ok_row("a"), None)
    with open(store.path, "ab") as f:
        f.write(b'{"cell_id": "b", "sta')  # killed mid-append
    store.add(ok_row("c"), None)
    with open(store.path, "ab") as f:
        f.write(b"42\n\xff\xfe binary\n[1, 2]\n")  # not rows at all
    assert [r["cell_id"] for r in read_rows(store.path)] == ["a", "c"]
    assert all(f"results.jsonl:{n}" in caplog.text for n in (2, 4, 5, 6))  # each damaged line by number


def test_a_row_is_done_only_when_its_scores_load_and_hold_every_image(tmp_path, caplog):
    store = ResultStore(tmp_path)
    store.add(ok_row("a", n=3), {"labels": np.zeros(3, int), "scores": np.zeros(3)})
    store.add(ok_row("b", n=3), {"labels": np.zeros(2, int), "scores": np.zeros(2)})  # a short file
    store.add(ok_row("c", n=3), {"labels": np.zeros(3, int), "scores": np.zeros(3)})
    store.scores_path("c").write_bytes(b"garbage")
    assert store.done("a", "h") and not store.done("b", "h") and not store.done("c", "h")
    assert str(store.scores_path("c")) in caplog.text


def test_a_row_is_not_done_when_another_cells_arrays_replace_its_own(tmp_path):
    """Both files are valid and the same size: only the row's scores_sha256 tells them apart."""
    store = ResultStore(tmp_path)
    mine, other = np.array([0.1, 0.2, 0.9]), np.array([0.9, 0.2, 0.1])
    for cell_id, scores in (("a", mine), ("b", other)):
        arrays = {"labels": np.array([0, 0, 1]), "scores": scores}
        store.add(ok_row(cell_id, n=3) | {"scores_sha256": arrays_sha256(arrays)}, arrays)
    assert store.done("a", "h") and store.done("b", "h")
    store.scores_path("a").write_bytes(store.scores_path("b").read_bytes())
    assert not store.done("a", "h") and store.done("b", "h")
    assert cell_scores(tmp_path, store.rows["a"]) is None and cell_scores(tmp_path, store.rows["b"]) is not None


def test_finalize_keeps_rows_it_did_not_write(tmp_path):
    mine, theirs = ResultStore(tmp_path), ResultStore(tmp_path)
    mine.add(ok_row("a"), None)
    theirs.add(ok_row("b"), None)  # another run's cell of the same suite, written meanwhile
    theirs.add(ok_row("x", suite="other"), None)  # and a row of another suite (an --append run)
    mine.add(ok_row("old"), None)
    rows = mine.finalize(["a", "b", "c"], "s")  # "old": this suite's cell it no longer has
    assert [r["cell_id"] for r in rows] == ["a", "b"]
    assert [r["cell_id"] for r in read_rows(mine.path)] == ["a", "b", "x"]


def test_a_folder_of_another_suite_needs_append(tmp_path):
    claim_folder(tmp_path, "s", "suites/s.yaml", append=False)
    claim_folder(tmp_path, "s", "suites/s.yaml", append=False)  # the same suite again: fine
    with pytest.raises(UserError, match="holds the results of suite 's'.*--append"):
        claim_folder(tmp_path, "s", "elsewhere/s.yaml", append=False)  # same name, another file
    claim_folder(tmp_path, "t", "suites/t.yaml", append=True)
    assert [o["name"] for o in json.loads((tmp_path / "suites.json").read_text())["suites"]] == ["s", "t"]


def test_the_output_lock_names_its_holder_and_is_released(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(UserError, match=f"process {os.getpid()} on .*--wait"):
            OutputLock(tmp_path).__enter__()
    with OutputLock(tmp_path):  # released on exit
        pass
    (tmp_path / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "started": "x"}))
    with OutputLock(tmp_path):  # its holder is gone: taken over
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_waiting_run_gets_the_folder_when_the_holder_leaves(tmp_path):
    import threading
    import time

    first = OutputLock(tmp_path).__enter__()
    threading.Timer(0.3, first.__exit__, args=(None, None, None)).start()
    start = time.monotonic()
    with OutputLock(tmp_path, wait=True, poll=0.05):
        assert time.monotonic() - start >= 0.25  # it got the folder only once the holder released it


def test_file_digests_are_remembered_until_the_file_changes(tmp_path):
    import hashlib

    from robustad_bench.core.files import file_sha256

    path, memo = tmp_path / "w.pt", tmp_path / "hashes.json"
    path.write_bytes(b"one")
    assert file_sha256(path, memo) == hashlib.sha256(b"one").hexdigest()
    assert hashlib.sha256(b"one").hexdigest() in memo.read_text()
    path.write_bytes(b"two!")  # replaced (another size, another mtime)
    assert file_sha256(path, memo) == hashlib.sha256(b"two!").hexdigest()


def test_files_follow_the_umask_and_orphans_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from robustad_bench.core.files import UMASK, atomic_write_bytes, remove_orphans

    atomic_write_bytes(tmp_path / "a" / "x.json", b"{}")
    assert (tmp_path / "a" / "x.json").stat().st_mode & 0o777 == 0o666 & ~UMASK  # not mkstemp's 0600
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / "a" / f".x.json.{dead}.k2j4.partial"  # a write killed before its rename
    orphan.write_bytes(b"half")
    (tmp_path / f".textures-brick.{dead}.q1.partial").mkdir()  # killed data generation
    mine = tmp_path / f".y.json.{os.getpid()}.z9.partial"  # a live writer's: left alone
    mine.write_bytes(b"")
    assert remove_orphans(tmp_path) == 2
    assert not orphan.exists() and mine.exists() and (tmp_path / "a" / "x.json").exists()


def test_cache_info_and_prune_by_age_and_suite(tmp_path, capsys):
    from robustad_bench.harness.cli import main

    cache, day = Cache(tmp_path), 86400
    cache.save_fit("aa" * 32, {"state_dict": {}}, {"suites": ["quick"]})
    cache.save_fit("bb" * 32, {"state_dict": {}}, {"suites": ["full"]})
    cache.save_eval("cc" * 32, ROW | {"suite": "quick"}, {"labels": np.zeros(3, int), "scores": np.zeros(3)})
    cache.save_eval("dd" * 32, ROW | {"suite": "full"}, {"labels": np.zeros(3, int), "scores": np.zeros(3)})
    lock = cache.lock("bb" * 32)
    with lock:
        pass
    now = os.path.getmtime(next(tmp_path.rglob("*.pt")))
    for path in [*tmp_path.rglob("*.pt"), *tmp_path.rglob("row.json")]:
        os.utime(path, (now - 10 * day, now - 10 * day))  # unused for ten days
    cache.load_fit("aa" * 32, suite="quick")  # used now: loading touches it
    assert main(["cache", "info", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fit" in out and "eval" in out and "quick" in out and "full" in out
    assert main(["cache", "prune", "--cache", str(tmp_path)]) == 2  # nothing said: nothing deleted
    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "5", "--keep-suite", "full", "--dry-run"]) == 0
    assert "would remove 1 item(s)" in capsys.readouterr().out  # quick's cell: old and not kept
    assert cache.load_eval("cc" * 32) is not None  # a dry run deletes nothing (and the load touched it)
    assert main(["cache", "prune", "--cache", str(tmp_path), "--older-than", "5"]) == 0
    assert "removed 2 item(s)" in capsys.readouterr().out  # full's fit and cell; quick's are recent
    assert cache.load_fit("bb" * 32) is None and cache.load_eval("dd" * 32) is None
    assert not (tmp_path / "locks" / f"{'bb' * 32}.lock").exists()
    assert cache.load_fit("aa" * 32) is not None and cache.load_eval("cc" * 32) is not None
    assert main(["cache", "prune", "--cache", str(tmp_path), "--keep-suite", "quick"]) == 0
    assert cache.load_fit("aa" * 32) is not None  # kept by its suite, whatever its age
