"""The plan: what a run computes, as frozen values, made once from a checked suite.

A ``FitTask`` is one (detector, dataset, category, seed) fit; an ``EvalTask`` is one cell
evaluated on a fit. Each has one ``key()``, the sha256 of canonical JSON of everything its
numbers depend on:
- fit key  = detector config + adapter version, dataset config + version + fingerprint,
             category, seed, held-out fraction, checkpoint digests, package version;
- cell key = fit key + resolved attack config + saved map size (+ threshold rule, + the
             transfer source's fit key), reported in rows as ``config_hash``. Not the
             batch size: no number depends on it (rows record the batch size used).
``make_plan`` builds each dataset once and fingerprints each fit once. ``status`` is the
one place that asks whether a cell is done. The runner, the backends (which receive groups
of tasks), ``--dry-run``, ``--estimate`` and the completion stamp all read the same plan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from robustad_bench.core.errors import UserError
from robustad_bench.core.files import file_sha256

from . import __version__
from .datasets import Dataset
from .datasets.base import digest
from .grid import NO_CELLS, Cell, build_dataset, expand, select
from .suite import Entry, Suite

DONE, CACHED, TODO = "done", "cached", "todo"


@dataclass(frozen=True)
class FitTask:
    """One fit: the detector of ``detector`` on one category of ``dataset`` at one seed."""

    detector: Entry
    dataset: Entry
    category: str
    seed: int
    holdout: float
    detector_version: str
    dataset_version: str
    fingerprint: str | None  # None in an unkeyed plan (``--dry-run``: the data need not be there)
    weight_files: tuple[tuple[str, str], ...] = ()  # (detector argument, sha256) of each checkpoint it names
    base: FitTask | None = None  # the fit this one adopts (its detector's ``fits_from`` entry), made once

    def config(self) -> dict[str, Any]:
        config = {"detector": self.detector.config(), "dataset": self.dataset.config(), "category": self.category, "seed": self.seed}
        return config | ({"holdout": self.holdout} if self.holdout else {})  # held-out normals change what is fitted

    def key(self) -> str:
        return self._key

    @cached_property
    def _key(self) -> str:  # computed once: every task of the fit asks for it
        if self.fingerprint is None:
            raise ValueError("an unkeyed plan (made for --dry-run) has no keys")
        return digest({
            **self.config(), "detector_version": self.detector_version, "dataset_version": self.dataset_version,
            "dataset_fingerprint": self.fingerprint, "weight_files": dict(self.weight_files), "package": __version__,
        })


@dataclass(frozen=True)
class EvalTask:
    """One cell evaluated on its fit (and, for a transfer attack, its source's fit)."""

    cell: Cell
    fit: FitTask
    source: FitTask | None = None

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    def key(self) -> str:
        return self._key

    @cached_property
    def _key(self) -> str:  # computed once: status, grouping, rows and the cache all ask for it
        config = {"fit": self.fit.key(), "attack": self.cell.attack.config(), "map_size": self.cell.map_size}
        if self.cell.threshold != "oracle":
            config["threshold"] = self.cell.threshold
        if self.source is not None:
            config["source_fit"] = self.source.key()
        return digest(config)


@dataclass(frozen=True)
class Plan:
    suite: Suite
    cell_ids: tuple[str, ...]  # every cell of the suite, in order (results.jsonl keeps this order)
    tasks: tuple[EvalTask, ...]  # the cells this run asks for (all, or those --only selects)
    datasets: dict[str, Dataset] = field(default_factory=dict, compare=False, repr=False)  # built once, by entry key

    def fits(self) -> list[FitTask]:
        """Every fit the tasks need, transfer sources included, each once."""
        found = {}
        for task in self.tasks:
            for fit in (task.fit, task.source) if task.source is not None else (task.fit,):
                if fit.base is not None:  # the base first: a plain entry of the same keys shares it
                    found.setdefault(digest(fit.base.config()), fit.base)
                found.setdefault(digest(fit.config()), fit)
        return list(found.values())

    def dataset(self, entry: Entry) -> Dataset:
        return self.datasets[digest(entry.config())]


def weight_files(config: dict[str, Any], hashes: Path | None) -> tuple[tuple[str, str], ...]:
    """(key, sha256) for every detector argument that names an existing file (a checkpoint):
    replacing the file changes the fit key, so no number of the old weights is served."""
    files = {k: Path(v).expanduser() for k, v in config.items() if isinstance(v, str) and v and Path(v).expanduser().is_file()}
    return tuple((k, file_sha256(path, hashes)) for k, path in sorted(files.items()))


def make_plan(suite: Suite, only: str | None = None, *, keyed: bool = True, hashes: Path | None = None) -> Plan:
    """The plan of ``suite`` (the cells whose id matches ``only``). ``keyed``: fingerprint the
    data, so tasks have keys (``--dry-run`` lists cells without the data); ``hashes``
    remembers checkpoint digests between runs."""
    datasets = {digest(entry.config()): build_dataset(entry) for entry in suite.datasets}
    cells = expand(suite, datasets)
    if not cells:  # nothing to do is a mistake, not a success with an empty results file
        raise UserError(NO_CELLS, file=suite.file, key="attacks")
    chosen = select(cells, only)
    if not chosen:
        raise UserError(f"--only {only!r} matches none of the suite's {len(cells)} cells (robustad-bench run --dry-run "
                        "lists them)", file=suite.file, key="--only")
    fits: dict[str, FitTask] = {}  # one per fit, shared by its tasks: each fingerprinted once
    tasks = tuple(EvalTask(c, fit_task(c, c.detector, datasets, fits, keyed, hashes),
                           fit_task(c, c.source, datasets, fits, keyed, hashes) if c.source is not None else None)
                  for c in chosen)
    return Plan(suite, tuple(c.cell_id for c in cells), tasks, datasets)


def fit_task(cell: Cell, detector: Entry, datasets: dict[str, Dataset], fits: dict[str, FitTask], keyed: bool,
             hashes: Path | None) -> FitTask:
    """The fit of ``detector`` on ``cell``'s data, made once and kept in ``fits``; a detector
    that fits from another entry (``fits_from``) gets that entry's fit as its ``base``."""
    from robustad_bench.adapters import DETECTORS

    dataset = datasets[digest(cell.dataset.config())]
    cls = DETECTORS.get(detector.name)
    fit = FitTask(detector, cell.dataset, cell.category, cell.seed, cell.holdout, cls.version, dataset.version, None)
    name = digest(fit.config())
    if name not in fits:
        fits_from = getattr(cls, "fits_from", None)  # a registered API factory declares none
        base = fits_from(**detector.kwargs) if fits_from is not None else None
        if base is not None:
            entry = Entry(base[0], f"{detector.label} (base)", base[1], key=detector.key)
            fit = replace(fit, base=fit_task(cell, entry, datasets, fits, keyed, hashes))
        fits[name] = replace(fit, fingerprint=dataset.fingerprint(cell.category, seed=cell.seed),
                             weight_files=weight_files(detector.kwargs, hashes)) if keyed else fit
    return fits[name]


def groups(tasks: list[EvalTask]) -> list[list[EvalTask]]:
    """The tasks by fit, in plan order: each group is fitted once and evaluated together."""
    by_fit: dict[str, list[EvalTask]] = defaultdict(list)
    for task in tasks:
        by_fit[task.fit.key()].append(task)
    return list(by_fit.values())


def status(task: EvalTask, cache, store=None) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """Whether ``task`` is done — the one place that asks: (DONE, None, None) when ``store``
    (the output folder) has its finished row; (CACHED, row, arrays) when the cache has it;
    (TODO, None, None) otherwise. A cache in recompute mode (``--force``) has nothing done."""
    key = task.key()
    if store is not None and not cache.recompute and store.done(task.cell_id, key):
        return DONE, None, None
    cached = cache.load_eval(key)
    return (CACHED, *cached) if cached is not None else (TODO, None, None)
