"""A finished run's stamp: a rerun of an unchanged suite ends in a fraction of a second.

When every cell of a suite has a row, the run writes ``complete.json`` in its output
folder: per suite file, everything the cells' keys and the rendered site depend on that can
be read without torch — the suite file's bytes, the package version, each dataset root's
file list and sizes (what the fit keys fingerprint), the checkpoint files the detectors
name, the submitted entries the site merges, and ``results.jsonl`` as written. A rerun
whose stamp still matches, and whose rows still hold every cell of the plan under the key
the plan gave it, has nothing to compute and nothing to render: the CLI says so
and exits 0 before importing torch. Any difference, ``--force``, ``--only`` or a missing
site takes the full path, which checks every cell as before. A run that writes into the
folder drops the stamp first.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from robustad_bench.core.errors import UserError
from robustad_bench.core.paths import resolve_root

from . import __version__

STAMP = "complete.json"


def _file(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _tree(root: Path) -> str | None:
    """Digest of the relative paths and sizes of the files under ``root`` (None: no folder)."""
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            h.update(f"{path.relative_to(root)}|{path.stat().st_size}\n".encode())
    return h.hexdigest()


def _roots(raw: dict[str, Any]) -> list[str]:
    """Every dataset root the suite can read, resolved as the loaders resolve it (a root
    naming an unset variable is left out: the full path reports it)."""
    roots = []
    for entry in raw.get("datasets") or []:
        if isinstance(entry, dict) and "name" in entry:
            try:
                roots.append(str(resolve_root(entry.get("root"), str(entry["name"]))))
            except UserError:
                continue
    return roots


def _files(raw: dict[str, Any]) -> list[str]:
    """Detector arguments that name existing files (checkpoints): their content enters the fit keys."""
    found = []
    for entry in raw.get("detectors") or []:
        for value in (entry.values() if isinstance(entry, dict) else ()):
            if isinstance(value, str) and value and Path(value).expanduser().is_file():
                found.append(str(Path(value).expanduser()))
    return found


def stamp(suite_file: Path, out: Path) -> dict[str, Any] | None:
    """What the finished run depended on; None when the suite cannot be read (the full path reports it)."""
    import yaml

    try:
        data = suite_file.read_bytes()
        raw = yaml.safe_load(data)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    return {
        "suite_sha256": hashlib.sha256(data).hexdigest(), "version": __version__,
        "roots": {root: _tree(Path(root)) for root in _roots(raw)},
        "files": {path: _file(Path(path)) for path in _files(raw)},
        "entries": _tree(Path("leaderboards/entries")),
        "results": _file(out / "results.jsonl"),
    }


def default_out(suite_file: Path) -> Path:
    """``runs/<suite name>``, the name read as the suite parser does (default: the file's stem)."""
    import yaml

    try:
        raw = yaml.safe_load(suite_file.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        raw = None
    name = raw.get("name") if isinstance(raw, dict) else None
    return Path("runs") / str(name or suite_file.stem)


def _read(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def scores_files(out: Path) -> dict[str, list[int] | None]:
    """Size and mtime of every finished row's ``scores.npz`` (relative path → [size, mtime_ns])."""
    relative = [f"cells/{cell_id}/scores.npz" for cell_id in finished_keys(out)]
    return {path: _file(out / path) for path in relative}


def finished_keys(out: Path) -> dict[str, str]:
    """cell id → config hash of every finished row in ``out/results.jsonl``."""
    from .rows import read_rows

    return {row["cell_id"]: row["config_hash"] for row in read_rows(out / "results.jsonl") if row["status"] == "ok"}


def finished_rows(suite_file: Path, out: Path) -> int | None:
    """The number of rows when ``out`` holds this suite's complete, rendered run unchanged —
    every row's arrays still there as written (a stat per file) — else None."""
    recorded = _read(out).get(str(suite_file.resolve()))
    if not recorded or not (out / "leaderboard.md").is_file() or not (out / "site" / "index.html").is_file():
        return None
    if stamp(suite_file, out) != recorded["stamp"] or not isinstance(recorded.get("scores"), dict):
        return None
    finished = finished_keys(out)
    if not isinstance(recorded.get("plan"), dict) or any(finished.get(c) != k for c, k in recorded["plan"].items()):
        return None  # a cell of the plan has no finished row of its key
    if any(state is None or _file(out / relative) != state for relative, state in recorded["scores"].items()):
        return None  # deleted, replaced or damaged arrays: the full path checks and recomputes them
    return int(recorded["rows"])


def stamp_complete(suite_file: Path, out: Path, rows: int, plan: dict[str, str]) -> None:
    """Stamp ``out`` as holding the complete run of ``suite_file`` (after its results and site
    are written): ``plan`` maps each of its cells to its key (``EvalTask.key``)."""
    from robustad_bench.core.files import atomic_write_bytes

    current = stamp(suite_file, out)
    if current is None:
        return
    stamps = _read(out) | {str(suite_file.resolve()): {"stamp": current, "rows": rows, "scores": scores_files(out),
                                                       "plan": plan}}
    atomic_write_bytes(out / STAMP, json.dumps(stamps, indent=1).encode())


def forget(out: Path) -> None:
    """Drop every stamp: this run is about to write into ``out``."""
    (out / STAMP).unlink(missing_ok=True)
