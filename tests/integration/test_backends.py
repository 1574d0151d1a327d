"""Backends give the same rows as the in-process run; bad backend input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustad_bench.harness.cli import main


def rows(out: Path) -> list[tuple]:
    return sorted((r["cell_id"], r["metrics"]["image_auroc"]) for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()))


def run(suite, tmp_path, name, *extra) -> int:
    return main(["run", str(suite), "--out", str(tmp_path / name), "--cache", str(tmp_path / f"cache-{name}"), "--no-progress", "--only", "*brick*", *extra])


def test_slurm_backend_through_submitit(tiny_suite, tmp_path):
    pytest.importorskip("submitit")
    assert run(tiny_suite, tmp_path, "local") == 0
    # submitit's "debug" cluster runs the array jobs in this process: the same code path as Slurm
    assert run(tiny_suite, tmp_path, "slurm", "--backend", "slurm", "--backend-option", "cluster=debug") == 0
    assert rows(tmp_path / "slurm") == rows(tmp_path / "local")


def test_ray_backend(tiny_suite, tmp_path):
    pytest.importorskip("ray")
    assert run(tiny_suite, tmp_path, "local") == 0
    assert run(tiny_suite, tmp_path, "ray", "--backend", "ray", "--backend-option", "num_cpus=1") == 0
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")


def test_unknown_backend_and_bad_options(tiny_suite, tmp_path, capsys):
    assert run(tiny_suite, tmp_path, "x", "--backend", "slurmm") == 2
    assert "Did you mean 'slurm'" in capsys.readouterr().err
    assert run(tiny_suite, tmp_path, "y", "--backend-option", "novalue") == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert run(tiny_suite, tmp_path, "z", "--backend-option", "partition=gpu") == 2
    assert "not understood by the local backend" in capsys.readouterr().err
