"""The output folder: ``results.jsonl`` (one row per cell) and ``cells/<cell_id>/scores.npz``.

Rows are appended (and fsync'ed) as cells finish, each on a line of its own, so a killed
run keeps every finished cell; a damaged line (a kill mid-write, stray bytes) is skipped
with a warning naming its line. At the end of a run the file is rewritten atomically in
plan order, merged with what is on disk then: a row this process did not write is never
dropped, except a row of this suite's own cells that the suite no longer contains.

One run owns a folder at a time (``OutputLock``), and a folder belongs to the suites that
wrote it (``suites.json``): another suite's run into it is an error unless it appends.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robustad_bench.core.errors import UserError
from robustad_bench.core.files import atomic_write_bytes, process_gone

from .cache import npz_bytes, read_npz
from .rows import arrays_match, read_rows
from .validity import validity_flags

log = logging.getLogger(__name__)


def cell_scores(out_dir: Path, row: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of ``row``'s cell under ``out_dir`` when they load and are the row's own;
    None with a warning naming the file otherwise."""
    path = out_dir / "cells" / row["cell_id"] / "scores.npz"
    arrays = load_scores(path)
    if arrays is not None and not arrays_match(row, arrays):
        log.warning("%s: not the arrays of its row (scores_sha256 differs); cell %s is left out", path, row["cell_id"])
        return None
    return arrays


def load_scores(path: Path) -> dict[str, np.ndarray] | None:
    """A cell's arrays, or None (with a warning naming the file) when they do not load."""
    try:
        return read_npz(path)
    except UserError as err:
        log.warning("%s", err)
        return None


def scores_only(path: Path) -> dict[str, np.ndarray] | None:
    """A cell's ``labels`` and ``scores`` (only those members are read: a rerun of a finished
    suite stays cheap), or None when the file is missing or does not load."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"labels": data["labels"], "scores": data["scores"]}
    except Exception:  # missing, truncated, not a zip, no scores: recompute the cell
        return None


class ResultStore:
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.jsonl"
        self.rows: dict[str, dict[str, Any]] = {r["cell_id"]: r for r in read_rows(self.path)}

    def scores_path(self, cell_id: str) -> Path:
        return self.out_dir / "cells" / cell_id / "scores.npz"

    def done(self, cell_id: str, config_hash: str) -> bool:
        """A finished row of this configuration whose arrays load and hold all its images."""
        row = self.rows.get(cell_id)
        if row is None or row.get("status") != "ok" or row.get("config_hash") != config_hash:
            return False
        arrays = scores_only(self.scores_path(cell_id))
        expected = row.get("n_normal", 0) + row.get("n_anomalous", 0)
        if not arrays_match(row, arrays) or len(arrays["scores"]) != expected:
            log.warning("%s: missing, unreadable, incomplete or not its row's; cell %s is computed again",
                        self.scores_path(cell_id), cell_id)
            return False
        return True

    def add(self, row: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> None:
        if arrays is not None:
            examples = {k: arrays[k] for k in arrays if k.startswith("example_")}
            arrays = {k: v for k, v in arrays.items() if not k.startswith("example_")}
            if examples:
                write_examples(self.out_dir / "cells" / row["cell_id"] / "examples", examples)
            # no fsync: the row below is the durable mark, and ``done`` checks the scores file it
            # points to (a crash that truncates it recomputes the cell)
            atomic_write_bytes(self.scores_path(row["cell_id"]), npz_bytes(arrays), durable=False)
        self.rows[row["cell_id"]] = row
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # a row killed mid-write leaves no newline: start this one on a line of its own
        fresh = not self.path.is_file() or self.path.stat().st_size == 0 or _last_byte(self.path) == b"\n"
        with open(self.path, "ab") as f:
            f.write((b"" if fresh else b"\n") + json.dumps(row).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, cell_ids: list[str], suite: str | None = None) -> list[dict[str, Any]]:
        """Rewrite results.jsonl atomically: one row per planned cell that has one (this
        process's, else the one on disk), then every row on disk of another suite; each with
        the validity flags the finished rows raise (``validity.py``)."""
        on_disk = {r["cell_id"]: r for r in read_rows(self.path)}
        planned = set(cell_ids)
        rows = [self.rows.get(c) or on_disk[c] for c in cell_ids if c in self.rows or c in on_disk]
        others = [r for c, r in on_disk.items() if c not in planned and suite is not None and r.get("suite") != suite]
        flags = validity_flags(rows + others, arrays=partial(cell_scores, self.out_dir))
        for row in rows + others:
            row["flags"] = sorted(flags.get(row["cell_id"], ()))
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows + others).encode())
        return rows


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def refuse_links(*folders: Path, key: str = "--out") -> None:
    """A symbolic link inside an output folder is an error naming it: results, tables and the
    site are written in place, and a link (``results.jsonl`` → a file elsewhere) would append
    to or overwrite a file outside the folder. The folder itself may be a link (``runs/`` on
    another disk): what it points to is checked."""
    for folder in folders:
        for parent, dirs, files in os.walk(folder.resolve()):  # never into linked folders: they are reported instead
            for name in dirs + files:
                path = Path(parent) / name
                if path.is_symlink():
                    raise UserError(f"{str(path)!r} is a symbolic link; robustad-bench writes its output files in place, never "
                                    "through links (one could overwrite a file outside the run folder): remove it",
                                    key=key)


def claim_folder(out_dir: Path, name: str, file: str, *, append: bool) -> None:
    """Record that suite ``name`` (from ``file``) writes into ``out_dir``; a folder that holds
    another suite's results is refused (exit 2) unless ``append``."""
    manifest = out_dir / "suites.json"
    me = {"name": name, "file": str(Path(file).resolve())}
    try:
        owners = json.loads(manifest.read_text())["suites"] if manifest.is_file() else []
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{str(manifest)!r} is damaged; delete it if the folder's results are yours") from None
    if not owners:  # a folder written before manifests: its rows name their suite
        owners = [{"name": s, "file": "?"} for s in sorted({r.get("suite") for r in read_rows(out_dir / "results.jsonl")} - {None})]
    strangers = [o for o in owners if (o["name"], o["file"]) != (me["name"], me["file"]) and not (o["file"] == "?" and o["name"] == name)]
    if strangers and not append:
        held = ", ".join(f"{o['name']!r} ({o['file']})" for o in strangers)
        raise UserError(f"{str(out_dir)!r} holds the results of suite {held}; run {name!r} into another --out, "
                        "or pass --append to keep both suites' rows in it", key="--out")
    if me not in owners:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(manifest, json.dumps({"suites": [o for o in owners if o["file"] != "?"] + [me]}, indent=1).encode())


ROW_SCHEMA = Path(__file__).parent / "schemas" / "results_row.schema.json"


def row_problems(row: dict) -> list[str]:
    """How ``row`` departs from the results row's JSON Schema (docs/results.md), one line each."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(ROW_SCHEMA.read_text()))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(row)'}: {e.message}" for e in validator.iter_errors(row)]


EXAMPLE_KINDS = ("clean", "clean_map", "adv", "adv_map", "delta")


def write_examples(folder: Path, examples: dict[str, np.ndarray]) -> None:
    """``<index>_<kind>.png`` per example: the clean and adversarial image, their maps (both on
    the clean map's range, inferno colour map) and the perturbation amplified to the full range."""
    from matplotlib import colormaps
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    inferno = colormaps["inferno"]
    for k, index in enumerate(examples["example_index"]):
        clean_map = examples["example_clean_map"][k].astype(np.float32)
        low, high = float(clean_map.min()), float(clean_map.max())
        span = high - low if high > low else 1.0
        delta = examples["example_delta"][k].astype(np.float32)
        scale = float(np.abs(delta).max()) or 1.0
        pictures = {
            "clean": examples["example_clean"][k].transpose(1, 2, 0),
            "adv": examples["example_adv"][k].transpose(1, 2, 0),
            "delta": ((0.5 + delta / (2 * scale)).clip(0, 1) * 255).astype(np.uint8).transpose(1, 2, 0),
        }
        for kind in ("clean_map", "adv_map"):
            normalised = ((examples[f"example_{kind}"][k].astype(np.float32) - low) / span).clip(0, 1)
            pictures[kind] = (inferno(normalised)[..., :3] * 255).astype(np.uint8)
        for kind in EXAMPLE_KINDS:
            Image.fromarray(np.ascontiguousarray(pictures[kind])).save(folder / f"{int(index):05d}_{kind}.png", optimize=True)


def package_commit() -> str | None:
    """The git commit of the installed package's source tree, when it is a checkout."""
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def write_run_info(out_dir: Path, info: dict) -> None:
    """``run.json``: per suite that wrote here, what the leaderboard header shows (name,
    description, headline threat model, date, package version and commit, cells)."""
    path = out_dir / "run.json"
    try:
        suites = json.loads(path.read_text())["suites"] if path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError):
        suites = {}
    suites[info["name"]] = info
    atomic_write_bytes(path, json.dumps({"suites": suites}, indent=1).encode())


def read_run_info(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / "run.json").read_text())["suites"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


class OutputLock:
    """``out_dir/.lock`` while a run writes there: holder's pid, host and start time. A second
    run exits 2 naming the holder, or with ``wait`` polls until the folder is free; a lock
    left by a dead process on this host is taken over."""

    def __init__(self, out_dir: Path, *, wait: bool = False, poll: float = 1.0):
        self.path, self.wait, self.poll = out_dir / ".lock", wait, poll
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _dead(holder, self.me["host"]):
                    log.warning("%s: taking over a lock left by process %s, which is gone", self.path, holder["pid"])
                    self.path.unlink(missing_ok=True)
                    continue
                if not self.wait:
                    who = f"process {holder['pid']} on {holder['host']} (since {holder['started']})" if holder else "another run"
                    raise UserError(f"{str(self.path.parent)!r} is being written by {who}; pass --wait to queue "
                                    f"behind it, or use another --out (delete {str(self.path)!r} if that run is gone)",
                                    key="--out") from None
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            return self

    def __exit__(self, *exc) -> None:
        if self._holder() == self.me:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # being written, or gone
        return holder if isinstance(holder, dict) and {"pid", "host", "started"} <= set(holder) else None


def _dead(holder: dict[str, Any], host: str) -> bool:
    """The holder ran on this host and is gone (another machine's process: we cannot tell)."""
    return holder["host"] == host and isinstance(holder["pid"], int) and process_gone(holder["pid"])
