"""The plan: frozen tasks with one key each, datasets built and fingerprinted once, one ``done?``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robustad_bench.core.errors import UserError
from robustad_bench.harness.cache import Cache
from robustad_bench.harness.datasets.digits import Digits
from robustad_bench.harness.plan import CACHED, DONE, TODO, make_plan, status
from robustad_bench.harness.results import ResultStore
from robustad_bench.harness.rows import arrays_sha256
from robustad_bench.harness.runner import cell_fields
from robustad_bench.harness.suite import parse_suite

SUITE = {
    "name": "t", "seed": [0, 1],
    "datasets": [{"name": "digits", "categories": ["0", "1"]}],
    "detectors": [{"name": "patchcore", "backbone": "resnet18", "label": "a"}, {"name": "patchcore", "backbone": "resnet18", "label": "b", "coreset_ratio": 0.5}],
    "attacks": [{"name": "none"}, {"name": "pgd", "eps": ["2/255", "8/255"], "steps": 2},
                {"name": "transfer", "source": "a", "eps": "8/255", "steps": 2}],
}


def test_tasks_are_frozen_values_whose_keys_ignore_the_batch_size():
    plan = make_plan(parse_suite(SUITE, file="s.yaml"))
    task = plan.tasks[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.fit = None
    other = make_plan(parse_suite({**SUITE, "batch_size": 3}, file="s.yaml"))
    assert [t.key() for t in other.tasks] == [t.key() for t in plan.tasks]
    assert len({t.key() for t in plan.tasks}) == len(plan.tasks) == len(plan.cell_ids)
    # 2 seeds × 2 detectors × 2 categories fits; b's transfer cells share a's fits as their source
    assert len(plan.fits()) == 8
    transfer = [t for t in plan.tasks if t.source is not None]
    assert transfer and all(t.source in [f for f in plan.fits()] and t.source.detector.label == "a" for t in transfer)


def test_each_dataset_is_built_once_and_each_fit_fingerprinted_once(monkeypatch):
    from robustad_bench.harness import plan as plan_module

    built, fingerprinted = [], []
    real_build, real_fingerprint = plan_module.build_dataset, Digits.fingerprint

    def counting_build(entry):
        built.append(entry.label)
        return real_build(entry)

    def counting_fingerprint(self, category, *, seed):
        fingerprinted.append((category, seed))
        return real_fingerprint(self, category, seed=seed)

    monkeypatch.setattr(plan_module, "build_dataset", counting_build)
    monkeypatch.setattr(Digits, "fingerprint", counting_fingerprint)
    plan = make_plan(parse_suite(SUITE, file="s.yaml"))
    assert len(built) == 1
    assert len(fingerprinted) == len(plan.fits()) == 8  # one per fit, not per cell (there are 28 cells: a skips its own transfer)
    assert len(plan.tasks) == 28
    assert make_plan(parse_suite(SUITE, file="s.yaml"), keyed=False).fits()[0].fingerprint is None
    assert len(fingerprinted) == 8  # an unkeyed plan (--dry-run) reads no data


def test_only_selects_tasks_and_a_selection_of_nothing_is_an_error():
    suite = parse_suite(SUITE, file="s.yaml")
    plan = make_plan(suite, "*pgd*eps8*")
    assert plan.tasks and all("pgd" in t.cell_id for t in plan.tasks)
    assert len(plan.cell_ids) == 28  # the whole suite: results.jsonl keeps its order
    with pytest.raises(UserError, match="matches none"):
        make_plan(suite, "*nothing-like-this*")


def test_status_is_todo_then_cached_then_done_and_force_sees_nothing_done(tmp_path):
    task = make_plan(parse_suite(SUITE, file="s.yaml")).tasks[0]
    cache, store = Cache(tmp_path / "cache"), ResultStore(tmp_path / "out")
    assert status(task, cache, store)[0] == TODO
    arrays = {"labels": np.array([0, 1]), "scores": np.array([0.1, 0.9])}
    row = {**cell_fields(task.cell), "status": "ok", "config_hash": task.key(), "metrics": {}, "flags": [],
           "n_normal": 1, "n_anomalous": 1, "scores_sha256": arrays_sha256(arrays)}
    cache.save_eval(task.key(), row, arrays)
    state, cached_row, _ = status(task, cache, store)
    assert state == CACHED and cached_row["config_hash"] == task.key()
    store.add(row, arrays)
    assert status(task, cache, store)[0] == DONE
    assert status(task, Cache(tmp_path / "cache", recompute=True), store)[0] == TODO
