"""Atomic writes, corrupt cache files, and interrupted results files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustad_bench.harness.cache import Cache, read_npz
from robustad_bench.harness.errors import UserError
from robustad_bench.harness.results import ResultStore


def test_eval_round_trip(tmp_path):
    cache = Cache(tmp_path)
    arrays = {"labels": np.array([0, 1]), "scores": np.array([0.1, 0.9], np.float32)}
    cache.save_eval("ab" * 32, {"cell_id": "x"}, arrays)
    row, loaded = cache.load_eval("ab" * 32)
    assert row == {"cell_id": "x"} and np.array_equal(loaded["scores"], arrays["scores"])
    assert cache.load_eval("cd" * 32) is None
    assert not list(tmp_path.rglob(".*.npz.*"))  # no temporary files left


def test_corrupt_fit_file_names_the_file(tmp_path):
    cache = Cache(tmp_path)
    cache.save_fit("ef" * 32, {"a": 1})
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=str(path)):
        cache.load_fit("ef" * 32)


def test_corrupt_npz_names_the_file(tmp_path):
    bad = tmp_path / "scores.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="scores.npz"):
        read_npz(bad)


def test_truncated_last_line_is_skipped_and_finalize_rewrites(tmp_path):
    store = ResultStore(tmp_path)
    store.add({"cell_id": "a", "status": "ok", "config_hash": "h"}, {"scores": np.zeros(2)})
    with open(store.path, "a") as f:
        f.write('{"cell_id": "b", "sta')  # a kill in the middle of a write
    again = ResultStore(tmp_path)
    assert list(again.rows) == ["a"] and again.done("a", "h") and not again.done("a", "other")
    again.finalize(["a", "zzz"])
    assert [json.loads(line)["cell_id"] for line in store.path.read_text().splitlines()] == ["a"]
