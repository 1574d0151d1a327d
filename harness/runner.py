"""Run a suite's plan: skip what is done, compute the rest by fit group, keep everything.

The plan (``plan.py``) says what runs and under which keys. A rerun of a finished suite
reads rows only; cells evaluated before under another output folder come from the cache;
only missing cells do model work.
"""

from __future__ import annotations

import logging
import platform
import re
import sys
import time
import traceback
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustad_bench.core.errors import UserError
from robustad_bench.core.files import remove_orphans

from . import __version__
from .attacks.recall import Recall, part_calls, run_order, taken_parts
from .backends import BACKENDS, check_backend
from .cache import Cache
from .certify import certificate_cell
from .complete import forget
from .datacheck import check_suite_data
from .datasets.base import Split
from .grid import Cell, build_dataset
from .plan import CACHED, TODO, EvalTask, FitTask, Plan, groups, make_plan, status
from .results import (
    OutputLock,
    ResultStore,
    claim_folder,
    package_commit,
    refuse_links,
    write_run_info,
)
from .rows import arrays_sha256
from .suite import Suite, deep_check
from .summaries import aggregate_run
from .tasks import (
    Fitted,
    Thresholds,
    clean_thresholds,
    evaluate_cell,
    evaluation_maps,
    evaluation_masks,
    fit_state,
    hold_out,
    quantile_thresholds,
    restore_fit,
    seeded,
)
from .weights import check_weights

log = logging.getLogger(__name__)
FROM_CACHE = "_from_cache"  # marks a row another run computed while this one waited (not saved)


@dataclass
class RunReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0  # cells evaluated now
    from_cache: int = 0  # cells copied from the content-addressed cache
    already_done: int = 0  # cells whose row was already in the output folder
    failed: list[str] = field(default_factory=list)
    user_errors: list[str] = field(default_factory=list)
    plan: dict[str, str] = field(default_factory=dict)  # cell id → key of every task the run was asked for


def resolve_device(device: str) -> torch.device:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device {device!r} is not a device; allowed: auto, cpu, cuda, cuda:N", key="--device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(device)


def _versions() -> dict[str, str]:
    """Versions of what computes the numbers, read from the installed distributions (importing
    timm and faiss only to ask would cost seconds per run)."""
    return {
        "robustad_bench": __version__, "torch": torch.__version__, "timm": distribution_version("timm"),
        "faiss": distribution_version("faiss-cpu", "faiss-gpu", "faiss"), "numpy": np.__version__,
        "python": platform.python_version(),
    }


def distribution_version(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"


def cell_fields(cell: Cell) -> dict[str, Any]:
    """The row fields that say which cell this is (contract: DESIGN §5)."""
    kw = cell.attack.kwargs
    return {
        "cell_id": cell.cell_id, "suite": cell.suite, "detector": cell.detector.label,
        "dataset": cell.dataset.label, "category": cell.category,
        "attack": cell.attack.name, "attack_label": cell.attack.label,
        "attack_kind": cell.spec.kind, "iterative": cell.spec.iterative,
        "attack_title": cell.spec.title if cell.spec.title and cell.attack.label == cell.attack.name else cell.attack.label,
        "attack_note": cell.spec.note or None,
        "norm": kw.get("norm"), "eps": cell.eps, "steps": int(kw.get("steps", 1 if "eps" in kw else 0)),
        "knowledge": cell.knowledge, "task": cell.objective, "seed": cell.seed,
        "attack_params": {"name": cell.attack.name, **kw},
        "detector_config": cell.detector.config(), "dataset_config": cell.dataset.config(),
    }


def _failed_row(task: EvalTask, err: BaseException) -> dict[str, Any]:
    return {
        **cell_fields(task.cell), "status": "failed", "config_hash": task.key(), "metrics": {}, "flags": [],
        "error": f"{err.__class__.__name__}: {err}", "user_error": isinstance(err, UserError),
        "_traceback": "".join(traceback.format_exception(err)),
    }


@dataclass
class Group:
    """What every cell of one fit group shares: the fitted detector, its clean outputs and
    thresholds, the row fields they give, and the transfer sources loaded so far."""

    fitted: Fitted
    thresholds: Thresholds
    row_fields: dict[str, Any]  # what every row of the group records (counts, versions, weights, fit time)
    raw_split: Split
    sources: dict[str, nn.Module] = field(default_factory=dict)
    recall: Recall = field(default_factory=Recall)  # adversarial images a later cell of the group takes as parts


def run_group(tasks: list[EvalTask], *, cache_root: str, device: str, recompute: bool, progress: bool,
              on_cell=None) -> list[tuple[dict, dict | None]]:
    """Fit once and evaluate every cell of one (detector, dataset, category, seed) group.

    Runs wherever the backend puts it, holding the group's file lock in the cache, so two
    runs sharing a cache compute each fit task once (the second waits, then reads it).
    Returns the (row, arrays) pairs and, in process, hands each to ``on_cell`` as soon as
    it is written to the cache.
    """
    device = str(resolve_device(device))
    cache, results = Cache(cache_root, recompute=recompute), []
    tasks = [tasks[i] for i in run_order([(task.cell.spec, task.cell.attack.kwargs) for task in tasks])]
    with cache.lock(tasks[0].fit.key()):
        try:
            group = prepare_group(tasks[0], cache, device)
            group.fitted.shared["certify_radii"] = certify_radii(tasks)
            group.recall = group_recall(tasks)
        except Exception as err:  # the whole group fails; other groups still run
            group = err
        for task in tasks:
            row, arrays = ((_failed_row(task, group), None) if isinstance(group, Exception)
                           else cell_row(task, group, cache, device, progress))
            results.append((row, arrays))
            if not isinstance(group, Exception):
                group.recall.done(part_calls(task.cell.spec, task.cell.attack.kwargs))
            if on_cell is not None:
                on_cell(row, arrays)
    return results


def group_recall(tasks: list[EvalTask]) -> Recall:
    """What the group's composite cells will take from its earlier cells: each part call that
    an earlier cell of the group makes as its own call (``taken_parts``), counted per taker."""
    taken = taken_parts([(task.cell.spec, task.cell.attack.kwargs) for task in tasks])
    return Recall(Counter(key for keys in taken for key in keys))


def certify_radii(tasks: list[EvalTask]) -> dict[float, list[float]]:
    """α → the radii of the group's certify cells: one set of noisy draws serves them all."""
    radii: dict[float, set[float]] = defaultdict(set)
    for task in tasks:
        if task.cell.spec.kind == "certificate":
            radii[float(task.cell.attack.kwargs.get("alpha", 0.001))].add(task.cell.eps)
    return {alpha: sorted(found) for alpha, found in radii.items()}


def prepare_group(task: EvalTask, cache: Cache, device: str) -> Group:
    """Load the category, fit the detector (or load its fit), derive the clean thresholds;
    ``task`` is any task of the group (they share all of this)."""
    cell, fit = task.cell, task.fit
    dataset = build_dataset(cell.dataset)  # in the worker that runs the group: the plan's datasets stay where it was made
    raw_split = hold_out(dataset.load(cell.category, seed=cell.seed, data_dir=cache.data_dir), cell.holdout, cell.seed)
    detector, split, state = load_or_fit(cell, raw_split, fit, cache, device)
    # a detector without localization (map = broadcast score) gets no pixel metrics: n/a
    size = cell.map_size or detector.input_size  # pixel metrics at the input size unless the suite downscales
    # from the masks as read (the file's resolution, or the dataset's image_size), so that the
    # any-pixel rule runs once on the whole path and no thin defect is lost before it
    masks = evaluation_masks(raw_split.masks, size) if raw_split.masks is not None else None
    held = state["holdout_scores"].numpy() if "holdout_scores" in state else None
    fitted = Fitted(detector, split, state["clean_scores"].numpy(), evaluation_maps(state["clean_maps"], size),
                    masks if detector.localization else None, float(state["fit_seconds"]), size, held)
    thresholds = clean_thresholds(split.labels, fitted.clean_scores, fitted.clean_maps, masks) if cell.quantile is None else \
        quantile_thresholds(cell.quantile, held, evaluation_maps(state["holdout_maps"], size), fitted.masks)
    labels = split.labels
    row_fields = {
        "n_normal": int((labels == 0).sum()), "n_anomalous": int(labels.sum()),
        "n_train": int(split.train.shape[0]), "device": device,
        "holdout": {"fraction": cell.holdout, "images": int(split.holdout.shape[0])} if split.holdout is not None else None,
        "versions": {**_versions(), "detector": fit.detector_version, "dataset": fit.dataset_version},
        "weights": getattr(detector, "weights", "unknown"), "fit_seconds": round(fitted.fit_seconds, 3),
        "score_only": not getattr(detector, "differentiable", True),
        "dataset_fingerprint": fit.fingerprint, "flags": [],
    }
    return Group(fitted, thresholds, row_fields, raw_split)


def load_or_fit(cell: Cell, raw_split: Split, fit: FitTask, cache: Cache, device: str,
                locked: bool = True) -> tuple[nn.Module, Split, dict[str, Any]]:
    """The detector of ``fit`` fitted on this category: its fitted state from the cache
    when there (the frozen backbone rebuilt from its name, weights and seed), else fitted
    now and saved without the parts fitting left unchanged. A fit with a ``base`` adopts
    the base's fit — from the cache, or made now and cached for every entry that shares it —
    instead of fitting again; under the base's lock when ``locked`` (a transfer source, loaded
    inside another group's lock, takes none: that lock could be its own base's)."""
    from robustad_bench.adapters import create_detector

    entry, key = fit.detector, fit.key()
    with seeded(cell.seed):
        detector = create_detector(entry.name, **entry.kwargs)
    detector.set_category(cell.category)
    resized = raw_split.resized(detector.input_size)
    detector.to(device).eval()
    state = cache.load_fit(key, cell.suite)
    if state is not None and not restore_fit(detector, state):
        log.warning("fit artifact %s was made with other initial weights (torch/timm changed?): fitting again", key[:12])
        state = None
    if state is None:
        base = None
        if fit.base is not None:
            with cache.lock(fit.base.key()) if locked else nullcontext():  # taken inside the wrapper's lock only
                base, _, base_state = load_or_fit(cell, raw_split, fit.base, cache, device)
        state = fit_state(detector, resized, seed=cell.seed, batch_size=cell.batch_size, device=device, adopt=base)
        if base is not None:  # the fit this detector stands on took the base's time
            state["fit_seconds"] += float(base_state["fit_seconds"])
        cache.save_fit(key, state, {"suites": [cell.suite], "detector": entry.label, "dataset": cell.dataset.label,
                                    "category": cell.category, "seed": cell.seed})
    return detector, resized, state


def source_for(task: EvalTask, group: Group, cache: Cache, device: str) -> nn.Module | None:
    """A transfer attack's fitted source detector, loaded once per group. Its fit is not
    locked: it belongs to another group, and waiting on that group's lock could deadlock."""
    cell = task.cell
    if task.source is None:
        return None
    if cell.source.label not in group.sources:
        source, _, _ = load_or_fit(cell, group.raw_split, task.source, cache, device, locked=False)
        target = group.fitted.detector
        if source.input_size != target.input_size:
            raise UserError(f"transfer source {cell.source.label!r} takes {source.input_size} px images but "
                            f"{cell.detector.label!r} takes {target.input_size}: give both the same input_size",
                            key=f"{cell.attack.key or 'attacks'}.source")
        group.sources[cell.source.label] = source
    return group.sources[cell.source.label]


def cell_row(task: EvalTask, group: Group, cache: Cache, device: str,
             progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """One cell's row and arrays: from the cache when a concurrent run finished it while this
    one waited for the group's lock, else evaluated now and saved."""
    cell = task.cell
    state, row, arrays = status(task, cache)
    if state == CACHED:
        return {**row, **cell_fields(cell), FROM_CACHE: True}, arrays
    try:
        source = source_for(task, group, cache, device)
        fields, arrays = evaluate_retrying_smaller(cell, group, device, progress, source)
    except Exception as err:
        return _failed_row(task, err), None
    row = {**cell_fields(cell), "status": "ok", "config_hash": task.key(), **group.row_fields, **fields, "scores_sha256": arrays_sha256(arrays)}
    cache.save_eval(task.key(), row, arrays)
    return row, arrays


def evaluate_retrying_smaller(cell: Cell, group: Group, device: str, progress: bool,
                     source: nn.Module | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``evaluate_cell``, retried at half the batch size when the device runs out of memory
    (per-image results do not depend on the batch size), down to 1."""
    batch_size = cell.batch_size
    while True:
        try:
            evaluate = certificate_cell if cell.spec.kind == "certificate" else evaluate_cell
            fields, arrays = evaluate(cell, group.fitted, thresholds=group.thresholds, device=device,
                                      progress=progress, source=source, batch_size=batch_size, recall=group.recall)
            return {**fields, "batch_size": batch_size}, arrays
        except torch.OutOfMemoryError as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size == 1:
                raise UserError(f"out of memory on {device} even at batch size 1 ({err}). Use a smaller "
                                "input_size, a device with more memory, or precision: bf16", key="batch_size") from err
            log.warning("%s: out of memory on %s at batch size %d; retrying at %d", cell.cell_id, device, batch_size,
                        batch_size // 2)
            batch_size //= 2


def run_suite(suite: Suite, *, out_dir: str | Path, cache_dir: str | Path, device: str = "auto", only: str | None = None,
              force: bool = False, workers: int = 1, progress: bool = True, backend: str = "local",
              backend_options: dict[str, Any] | None = None, append: bool = False, wait: bool = False) -> RunReport:
    """Run (or resume) ``suite`` into ``out_dir``, which this run holds alone while it writes
    (``wait``: queue behind another run); ``append`` shares the folder with other suites.
    Everything is checked before the plan is made, and the plan before any model work."""
    resolve_device(device)  # fail early on an impossible device
    run_backend = BACKENDS.get(backend, key="--backend")
    check_backend(backend, backend_options or {})  # before any work, not when there is work
    for note in check_suite_data(suite, defer_unreachable=False):  # raises on a layout problem, before any compute
        log.warning("%s", note)
    deep_check(suite)  # the components' own checks (timm names, ...)
    for note in check_weights(suite, strict=backend != "local"):  # offline or on a cluster: every missing file, now
        log.warning("%s", note)
    refuse_links(Path(out_dir))
    cache = Cache(cache_dir, recompute=force)
    plan = make_plan(suite, only, hashes=cache.root / "file-hashes.json")
    with OutputLock(Path(out_dir), wait=wait):
        claim_folder(Path(out_dir), suite.name, suite.file, append=append)
        forget(Path(out_dir))  # this run writes here: a finished run's stamp no longer holds
        for folder in (Path(out_dir), cache.root):  # what killed runs left half-written
            remove_orphans(folder)
        return run_plan(plan, cache, run_backend, out_dir=out_dir, device=device, workers=workers, progress=progress,
                        backend=backend, backend_options=backend_options)


def keep_row(row: dict[str, Any], arrays: dict[str, np.ndarray] | None, store: ResultStore, report: RunReport, bar) -> None:
    """Record one finished cell: its row and arrays in the output folder, its traceback beside them."""
    tb = row.pop("_traceback", None)
    if tb is not None:
        tb_path = store.out_dir / "cells" / row["cell_id"] / "traceback.txt"
        tb_path.parent.mkdir(parents=True, exist_ok=True)
        tb_path.write_text(tb)
        row["traceback"] = str(tb_path.relative_to(store.out_dir))
        (report.user_errors if row.get("user_error") else report.failed).append(f"{row['cell_id']}: {row['error']}")
    elif row.pop(FROM_CACHE, False):  # a concurrent run sharing the cache computed it
        report.from_cache += 1
    else:
        report.computed += 1
    store.add(row, arrays)
    bar.update(1)
    bar.set_postfix_str(row["cell_id"][:60])


def run_plan(plan: Plan, cache: Cache, run_backend, *, out_dir, device, workers, progress, backend,
             backend_options) -> RunReport:
    store, report = ResultStore(out_dir), RunReport(plan={task.cell_id: task.key() for task in plan.tasks})
    bar = tqdm(total=len(plan.tasks), desc="cells", unit="cell", disable=not progress, file=sys.stderr)
    todo = []
    for task in plan.tasks:
        state, row, arrays = status(task, cache, store)
        if state == TODO:
            todo.append(task)
            continue
        if state == CACHED:
            store.add({**row, **cell_fields(task.cell)}, arrays)
            report.from_cache += 1
        else:
            report.already_done += 1
        bar.update(1)
    if todo:
        work = partial(run_group, cache_root=str(cache.root), recompute=cache.recompute)
        run_backend(work, groups(todo), workers=workers, record=partial(keep_row, store=store, report=report, bar=bar),
                    device=device, options=backend_options or {}, folder=cache.root / "jobs" / backend, progress=progress)
    bar.close()
    suite = plan.suite
    report.rows = store.finalize(list(plan.cell_ids), suite.name)
    aggregate_run(Path(out_dir))  # every aggregate number, computed once here and written beside the rows
    write_run_info(Path(out_dir), {
        "name": suite.name, "description": suite.description, "file": str(Path(suite.file).resolve()),
        "headline": list(suite.headline) if suite.headline else None, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "version": __version__, "commit": package_commit(), "cells": len(plan.cell_ids),
    })
    return report
