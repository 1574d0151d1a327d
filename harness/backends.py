"""Where fit groups run: ``local`` (in process, or a process pool), ``slurm`` (submitit), ``ray``.

A backend receives ``run_group`` (a picklable function of one group), the pending fit
groups, a ``record(row, arrays)`` callback for the main process, the device string, the
``--backend-option`` values, a scratch ``folder`` for job files and whether to show
per-cell progress (only meaningful in this process). Every group writes its cells
atomically into the shared cache as they finish, so an interrupted remote run resumes
from the cache. ``--backend-option KEY=VALUE``
values go to the backend: for ``slurm`` to submitit (``cluster=`` for its constructor,
anything else to ``update_parameters``, e.g. ``slurm_partition=gpu timeout_min=600
gpus_per_node=1``); for ``ray`` to ``ray.remote`` (``num_gpus=1 num_cpus=4``) and
``address=`` to ``ray.init``.
"""

from __future__ import annotations

import importlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from robustad_bench.core.errors import UserError
from robustad_bench.core.registry import Registry

Backend = Callable[..., None]
BACKENDS: Registry[Backend] = Registry("backend")
register_backend = BACKENDS.register


def _require(module: str, backend: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"--backend {backend} needs the {module!r} package: pip install {module}", key="--backend") from err


WORKER_DEVICE: str | None = None  # in a local worker process: the device it was given


def _worker_init(threads: int, devices) -> None:
    """A local worker's start: its share of the CPU threads and its own device, taken from
    the queue (one GPU per worker on CUDA)."""
    global WORKER_DEVICE
    torch.set_num_threads(threads)
    WORKER_DEVICE = devices.get()


def _on_worker_device(run_group: Callable, group: list, **kwargs):
    """``run_group`` on the device of the worker process that runs it."""
    return run_group(group, device=WORKER_DEVICE, **kwargs)


def _unexpected(backend: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise UserError(f"--backend-option {extra} not understood by the {backend} backend; allowed: {list(allowed)}", key="--backend-option")


@register_backend("local")
def local(run_group: Callable, groups: list, *, workers: int, record: Callable, device: str, options: dict[str, Any],
          folder: Path, progress: bool) -> None:
    """In this process, or ``workers`` processes each taking whole groups; on CUDA each worker
    holds one GPU (worker i gets ``cuda:i`` modulo the visible GPUs), so groups never share a
    device by accident."""
    _unexpected("local", options, ())
    if workers <= 1 or len(groups) <= 1:
        for group in groups:
            run_group(group, device=device, on_cell=record, progress=progress)
        return
    threads = max(1, torch.get_num_threads() // workers)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    context = multiprocessing.get_context("spawn")
    devices = context.Manager().Queue()
    for i in range(workers):
        devices.put(f"cuda:{i % torch.cuda.device_count()}" if cuda else "cpu")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                             initargs=(threads, devices)) as pool:
        futures = [pool.submit(_on_worker_device, run_group, group, progress=False) for group in groups]
        for future in futures:
            for row, arrays in future.result():
                record(row, arrays)


@register_backend("slurm")
def slurm(run_group: Callable, groups: list, *, workers: int, record: Callable, device: str, options: dict[str, Any],
          folder: Path, progress: bool) -> None:
    """One array job per fit group through submitit; ``workers`` caps how many run at once."""
    submitit = _require("submitit", "slurm")
    options = dict(options)
    executor = submitit.AutoExecutor(folder=folder, cluster=options.pop("cluster", None))
    try:
        executor.update_parameters(slurm_array_parallelism=max(1, workers), **options)
    except (ValueError, TypeError) as err:
        raise UserError(f"--backend-option: {err}", key="--backend-option") from err
    jobs = executor.map_array(partial(run_group, device=device, progress=False), groups)
    for job in jobs:
        for row, arrays in job.result():
            record(row, arrays)


@register_backend("ray")
def ray(run_group: Callable, groups: list, *, workers: int, record: Callable, device: str, options: dict[str, Any],
        folder: Path, progress: bool) -> None:
    """One Ray task per fit group (``num_gpus``/``num_cpus`` from the backend options)."""
    ray_module = _require("ray", "ray")
    options = dict(options)
    started = not ray_module.is_initialized()
    if started:
        ray_module.init(address=options.pop("address", None))
    try:
        try:
            remote = ray_module.remote(_call).options(**options)
        except (ValueError, TypeError) as err:
            raise UserError(f"--backend-option: {err}", key="--backend-option") from err
        pending = [remote.remote(run_group, group, device=device, progress=False) for group in groups]
        while pending:
            done, pending = ray_module.wait(pending, num_returns=1)
            for row, arrays in ray_module.get(done[0]):
                record(row, arrays)
    finally:
        if started:
            ray_module.shutdown()


def check_backend(name: str, options: dict[str, Any]) -> None:
    """What can be known before any work: the backend's package is installed, and the local
    backend takes no options (slurm and ray check theirs when they build their jobs)."""
    BACKENDS.get(name, key="--backend")
    if name == "local":
        _unexpected("local", options, ())
    else:
        _require({"slurm": "submitit", "ray": "ray"}[name], name)


def _call(fn: Callable, *args, **kwargs):
    """A plain function for ``ray.remote``, which rejects ``functools.partial`` objects."""
    return fn(*args, **kwargs)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["timeout_min=60", "slurm_partition=gpu"]`` → typed dict (ints, floats, booleans kept)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--backend-option expects KEY=VALUE, got {pair!r}", key="--backend-option")
        options[key] = yaml.safe_load(value)
    return options
