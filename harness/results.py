"""The output folder: ``results.jsonl`` (one row per cell) and ``cells/<cell_id>/scores.npz``.

Rows are appended (and fsync'ed) as cells finish, so a killed run keeps every finished
cell; a truncated last line from a kill is ignored on the next start. At the end of a
run the file is rewritten atomically in plan order, dropping rows of cells the suite no
longer contains.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write_bytes, npz_bytes
from .validity import validity_flags

log = logging.getLogger(__name__)


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping an unreadable row (interrupted write?)", path, n)
    return rows


class ResultStore:
    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.jsonl"
        self.rows: dict[str, dict[str, Any]] = {r["cell_id"]: r for r in read_rows(self.path) if "cell_id" in r}

    def scores_path(self, cell_id: str) -> Path:
        return self.out_dir / "cells" / cell_id / "scores.npz"

    def done(self, cell_id: str, config_hash: str) -> bool:
        row = self.rows.get(cell_id)
        return (
            row is not None and row.get("status") == "ok" and row.get("config_hash") == config_hash
            and self.scores_path(cell_id).is_file()
        )

    def add(self, row: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> None:
        if arrays is not None:
            atomic_write_bytes(self.scores_path(row["cell_id"]), npz_bytes(arrays))
        self.rows[row["cell_id"]] = row
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finalize(self, cell_ids: list[str]) -> list[dict[str, Any]]:
        """Rewrite results.jsonl atomically with one row per planned cell that has a row,
        each with the validity flags the finished rows raise (``validity.py``)."""
        rows = [self.rows[c] for c in cell_ids if c in self.rows]
        flags = validity_flags(rows)
        for row in rows:
            row["flags"] = sorted(flags.get(row["cell_id"], ()))
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path, text.encode())
        return rows
