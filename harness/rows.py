"""What a results row is, for every reader: the fields readers rely on, whether it is clean,
reading a results file, and the digest that ties a row to its arrays.

Torch-free and import-free within the package, so the validity checks, the results store,
the cache, the completion stamp and the renderer share one definition.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CELL_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")  # what a grid makes: never a path outside cells/
UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")  # what a file or cell-id part may not hold


def safe_part(text: object) -> str:
    """``text`` with every run of characters outside letters, digits, ``_ . -`` made one ``_``."""
    return UNSAFE.sub("_", str(text))


def is_clean(row: Any) -> bool:
    """Whether a row (or a frame's record) is a clean cell: its attack's kind is ``none``, the
    declared metadata (rows written before ``attack_kind`` existed: the ``none`` attack)."""
    kind = row.get("attack_kind")
    return kind == "none" if isinstance(kind, str) else row.get("attack") == "none"


def row_problem(row: Any) -> str | None:
    """Why ``row`` cannot be a results row (a cheap check of the fields every reader relies on,
    run on every row read: the full schema is ``row_problems``); None when it can."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not an object"
    cell_id = row.get("cell_id")
    if not isinstance(cell_id, str) or not CELL_ID.fullmatch(cell_id) or cell_id.strip(".") == "":
        return f"cell_id {cell_id!r} is not a cell id (letters, digits, '_', '-', '.'; no '/')"
    if row.get("status") not in ("ok", "failed"):
        return f"status {row.get('status')!r}; allowed: 'ok', 'failed'"
    if row["status"] == "failed":
        return None
    for key in ("suite", "detector", "dataset", "category", "attack"):
        if not isinstance(row.get(key), str):
            return f"{key} {row.get(key)!r} is not a string"
    eps, metrics = row.get("eps"), row.get("metrics")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        return f"eps {eps!r} is not a number ≥ 0"
    if not isinstance(metrics, dict) or any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))
                                            for v in metrics.values()):
        return f"metrics {str(metrics)[:60]!r} is not an object of numbers"
    return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The readable rows of a results file; damaged lines and rows without the fields every
    reader relies on (``row_problem``) are skipped with a warning naming the line."""
    rows = []
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            log.warning("%s:%d: skipping a damaged row (an interrupted write?)", path, n)
            continue
        if problem := row_problem(row):
            log.warning("%s:%d: skipping a row that is not a results row: %s", path, n, problem)
            continue
        rows.append(row)
    return rows


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of a cell's ``labels`` and ``scores`` (dtype, shape, bytes): the row records it,
    so arrays that are not the row's (another cell's file put in their place) are refused."""
    h = hashlib.sha256()
    for key in ("labels", "scores"):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def arrays_match(row: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> bool:
    """Whether ``arrays`` are the row's own (rows written before the digest existed: trusted)."""
    if arrays is None or "labels" not in arrays or "scores" not in arrays:
        return False
    expected = row.get("scores_sha256")
    return expected is None or expected == arrays_sha256(arrays)
