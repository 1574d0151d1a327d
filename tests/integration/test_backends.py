"""Backends give the same rows as the in-process run; bad backend input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustad_bench.harness.cli import main

TIMING = ("seconds", "fit_seconds")  # wall-clock fields: the only ones allowed to differ


def rows(out: Path) -> list[dict]:
    """The results rows, timing fields aside, in cell order."""
    found = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k not in TIMING} for r in found), key=lambda r: r["cell_id"])


def run(suite, tmp_path, name, *extra) -> int:
    return main(["run", str(suite), "--out", str(tmp_path / name), "--cache", str(tmp_path / f"cache-{name}"), "--no-progress", "--only", "*brick*", *extra])


def test_slurm_backend_through_submitit_local_executor(tiny_suite, tmp_path):
    pytest.importorskip("submitit")
    assert run(tiny_suite, tmp_path, "local") == 0
    # submitit's "local" cluster runs each array job in its own process, pickled and unpickled
    # as on Slurm (the jobs' files go under the cache's jobs/slurm/)
    assert run(tiny_suite, tmp_path, "slurm", "--backend", "slurm", "--backend-option", "cluster=local",
               "--backend-option", "timeout_min=10") == 0
    assert rows(tmp_path / "slurm") == rows(tmp_path / "local")
    assert list((tmp_path / "cache-slurm" / "jobs" / "slurm").rglob("*_result.pkl"))  # it did go through submitit


def test_ray_backend_on_a_local_instance_started_here(tiny_suite, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert run(tiny_suite, tmp_path, "local") == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the instance the run's tasks go to
    try:
        assert run(tiny_suite, tmp_path, "ray", "--backend", "ray", "--backend-option", "num_cpus=1") == 0
        assert ray.cluster_resources().get("CPU") == 2  # the run used this instance, and left it running
    finally:
        ray.shutdown()
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")




def test_unknown_backend_and_bad_options(tiny_suite, tmp_path, capsys):
    assert run(tiny_suite, tmp_path, "x", "--backend", "slurmm") == 2
    assert "Did you mean 'slurm'" in capsys.readouterr().err
    assert run(tiny_suite, tmp_path, "y", "--backend-option", "novalue") == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert run(tiny_suite, tmp_path, "z", "--backend-option", "partition=gpu") == 2
    assert "not understood by the local backend" in capsys.readouterr().err


def test_local_runs_one_worker_per_visible_gpu(monkeypatch):
    from robustad_bench.harness.cli import default_workers

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert default_workers("auto") == 4 and default_workers("cuda") == 4
    assert default_workers("cpu") == 1  # on CPU: --workers N


def test_each_local_worker_keeps_its_own_device():
    import queue

    import torch

    from robustad_bench.harness import backends

    devices, threads = queue.Queue(), torch.get_num_threads()
    devices.put("cuda:1")  # what the local backend queues for the second worker on CUDA
    backends._worker_init(1, devices)  # a worker's start: its device taken from the queue
    try:
        ran = backends._on_worker_device(lambda group, *, device, progress: [(group, device)], ["g"], progress=False)
        assert ran == [(["g"], "cuda:1")]  # the group runs on the worker's device, whatever the run's
    finally:
        backends.WORKER_DEVICE = None
        torch.set_num_threads(threads)
