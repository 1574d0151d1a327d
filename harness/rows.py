"""What a results row is, for every reader: the fields readers rely on, and whether it is clean.

Torch-free and import-free within the package, so the validity checks, the results store,
the cache and the renderer share one definition.
"""

from __future__ import annotations

import math
import re
from typing import Any

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
