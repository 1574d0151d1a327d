"""Content-addressed artifact cache: fit states and evaluated cells, written atomically.

Layout under the cache root::

    fit/<key[:2]>/<key>.pt          what fitting produced (bank, trained weights) + clean test outputs
    fit/<key[:2]>/<key>.json        which suites used it, and for what (``cache info``)
    locks/<key>.lock                one per fit task: concurrent runs compute it once
    eval/<key[:2]>/<key>/row.json   one finished cell's result row
    eval/<key[:2]>/<key>/scores.npz its per-image scores (and maps)
    data/                           generated embedded datasets

Keys are sha256 digests of everything that determines the artifact (see ``runner``).
A file that cannot be read is reported with its path and computed again, never reused.
Loading an artifact touches it, so ``cache prune --older-than DAYS`` removes what no run
has used for DAYS days.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from robustad_bench.core.errors import UserError
from robustad_bench.core.files import atomic_write_bytes

from .rows import arrays_match, row_problem

log = logging.getLogger(__name__)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:
        raise UserError(f"corrupt file {str(path)!r} ({err}); delete it (or rerun with --force) to recompute") from err


class TaskLock(FileLock):
    """A ``FileLock`` that says when it waits for another process."""

    def __enter__(self):
        try:
            self.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for another run computing this fit task (%s)", self.lock_file)
            self.acquire()
        return self


class Cache:
    """The content-addressed cache. ``recompute`` (``--force``) is a mode of the cache, not a
    parameter of the runner: nothing is read from it, everything computed is written to it."""

    def __init__(self, root: str | Path, *, recompute: bool = False):
        self.root = Path(root).expanduser()
        self.recompute = recompute

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def lock(self, key: str) -> FileLock:
        """The fit task's lock: held while a run fits and evaluates that group, so a second
        run sharing the cache waits and then reads what the first computed."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return TaskLock(str(path))

    def _fit_path(self, key: str) -> Path:
        return self.root / "fit" / key[:2] / f"{key}.pt"

    def _eval_dir(self, key: str) -> Path:
        return self.root / "eval" / key[:2] / key

    def load_fit(self, key: str, suite: str | None = None) -> dict[str, Any] | None:
        path = self._fit_path(key)
        if self.recompute or not path.is_file():
            return None
        try:
            artifact = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            log.warning("corrupt cache file %r (%s): computing it again", str(path), err)
            return None
        touch(path)
        if suite is not None:
            self._note_suite(key, suite)
        return artifact

    def save_fit(self, key: str, artifact: dict[str, Any], about: dict[str, Any] | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(artifact, buffer)
        atomic_write_bytes(self._fit_path(key), buffer.getvalue(), durable=False)
        if about is not None:
            atomic_write_bytes(self._fit_path(key).with_suffix(".json"), json.dumps(about, indent=1).encode())

    def _note_suite(self, key: str, suite: str) -> None:
        """Add ``suite`` to the suites a fit artifact serves (what ``cache info`` groups by)."""
        path = self._fit_path(key).with_suffix(".json")
        try:
            about = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if suite not in about.get("suites", []):
            about["suites"] = sorted({*about.get("suites", []), suite})
            atomic_write_bytes(path, json.dumps(about, indent=1).encode())

    def load_eval(self, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        folder = self._eval_dir(key)
        row_path, scores_path = folder / "row.json", folder / "scores.npz"
        if self.recompute or not (row_path.is_file() and scores_path.is_file()):
            return None
        try:
            row = json.loads(row_path.read_text())
            arrays = read_npz(scores_path)
        except (OSError, ValueError, UserError) as err:
            log.warning("corrupt cache file in %r (%s): computing it again", str(folder), err)
            return None
        problem = row_problem(row) or (None if row.get("status") == "ok" else "not a finished cell")
        if problem is None and not arrays_match(row, arrays):
            problem = "scores.npz is not its row's (scores_sha256 differs)"
        if problem is not None:
            log.warning("corrupt cache entry in %r (row.json %s): computing it again", str(folder), problem)
            return None
        touch(row_path)
        return row, arrays

    def save_eval(self, key: str, row: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        folder = self._eval_dir(key)
        atomic_write_bytes(folder / "scores.npz", npz_bytes(arrays), durable=False)
        atomic_write_bytes(folder / "row.json", json.dumps(row, indent=1).encode(), durable=False)  # written last: marks complete


def touch(path: Path) -> None:
    """Mark ``path`` as used now (its mtime): what ``cache prune --older-than`` reads."""
    try:
        os.utime(path)
    except OSError:  # a read-only shared cache: still usable, only not marked
        pass


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class Item:
    """One prunable thing in the cache: a fit artifact, an evaluated cell, a generated dataset."""

    kind: str  # fit | eval | data
    paths: list[Path]
    suites: list[str]
    used: float  # last use (mtime), seconds since the epoch
    size: int


def cache_items(root: Path) -> list[Item]:
    items = []
    for pt in sorted((root / "fit").glob("*/*.pt")):
        about = pt.with_suffix(".json")
        try:
            suites = json.loads(about.read_text()).get("suites", [])
        except (OSError, ValueError):
            suites = []
        paths = [pt] + ([about] if about.is_file() else [])
        items.append(Item("fit", paths, suites, pt.stat().st_mtime, sum(p.stat().st_size for p in paths)))
    for row in sorted((root / "eval").glob("*/*/row.json")):
        try:
            suites = [json.loads(row.read_text())["suite"]]
        except (OSError, ValueError, KeyError):
            suites = []
        items.append(Item("eval", [row.parent], suites, row.stat().st_mtime, folder_bytes(row.parent)))
    for folder in sorted((root / "data").glob("*/*")) if (root / "data").is_dir() else ():
        if folder.is_dir():
            items.append(Item("data", [folder], [], folder.stat().st_mtime, folder_bytes(folder)))
    return items


def cache_info(root: Path) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], int]:
    """(count, bytes) by kind and by suite, and the total bytes of the folder (locks, job files,
    checkpoint digests included)."""
    by_kind: dict[str, list[int]] = {}
    by_suite: dict[str, list[int]] = {}
    for item in cache_items(root):
        for table, name in [(by_kind, item.kind)] + [(by_suite, s) for s in item.suites or ["(no suite: data or unknown)"]]:
            entry = table.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += item.size
    return ({k: tuple(v) for k, v in by_kind.items()}, {k: tuple(v) for k, v in sorted(by_suite.items())},
            folder_bytes(root) if root.is_dir() else 0)


def prune(root: Path, *, older_than: float | None, keep_suites: list[str], now: float | None = None,
          dry_run: bool = False) -> tuple[int, int]:
    """Delete the fit artifacts, evaluated cells and generated datasets not used for
    ``older_than`` days (any age when None) that no suite in ``keep_suites`` uses; returns
    (items, bytes) removed. A removed fit's lock file goes with it."""
    now = time.time() if now is None else now
    removed = freed = 0
    for item in cache_items(root):
        if set(item.suites) & set(keep_suites):
            continue
        if older_than is not None and now - item.used < older_than * 86400:
            continue
        if not dry_run:
            for path in item.paths:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            if item.kind == "fit":
                (root / "locks" / f"{item.paths[0].stem}.lock").unlink(missing_ok=True)
        removed, freed = removed + 1, freed + item.size
    return removed, freed
