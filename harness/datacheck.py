"""The data check: a suite's dataset folders verified before any compute.

``validate`` runs it when a root is reachable (and says it deferred it when not), ``run``
always: a missing root, a category with no images, an unpaired mask or image and a mask
of another size than its image are errors naming the path, the suite's key and what was
expected. Counts that differ from the published ones are warnings (a subset, a release).
``robustad-bench data check`` prints the same rows as a table.
"""

from __future__ import annotations

import logging

from tabulate import tabulate

from robustad_bench.core.errors import SuiteErrors, UserError

from .datasets import Dataset
from .datasets.layout import CheckRow
from .grid import build_dataset
from .suite import Entry, Suite

log = logging.getLogger(__name__)


def check_rows(dataset: Dataset, categories: list[str]) -> list[CheckRow]:
    rows = [dataset.check(c) for c in categories]
    return [r for r in rows if r is not None]


def counts_table(rows: list[CheckRow]) -> str:
    """Found vs published counts per category, then what is missing, extra or different, in full."""
    lines = [[r.category, str(r.found) if r.found else "-", str(r.published) if r.published else "?", r.status] for r in rows]
    text = tabulate(lines, headers=["category", "found (train / test normal / test anomalous)", "published", "status"],
                    tablefmt="github", disable_numparse=True)
    details = [f"  {r.category}: {'ERROR ' if p in r.problems else ''}{p}" for r in rows for p in r.problems + r.warnings]
    return "\n".join([text, *details])


def check_entry(entry: Entry, file: str, *, defer_unreachable: bool) -> tuple[list[UserError], list[str]]:
    """(errors, notes) for one dataset entry of a suite."""
    try:
        dataset = build_dataset(entry)
        if not dataset.reachable():
            message = f"dataset root {str(dataset.root)!r} does not exist or is not a folder"
            if str(dataset.root).startswith("$ROBUSTAD_DATA"):
                message += " (no root: is given and ROBUSTAD_DATA is not set)"
            if defer_unreachable:
                return [], [f"{entry.key}: {message}; its data check is deferred to run"]
            return [UserError(f"{message}; expected {dataset.layout} (robustad-bench data prepare {entry.name} says where "
                              "to get it)", file=file, key=f"{entry.key}.root")], []
        categories = dataset.categories
        if not categories:
            return [UserError("resolves to 0 categories", file=file, key=entry.key)], []
        rows = check_rows(dataset, categories)
    except UserError as err:
        return [UserError(str(err), file=file, key=entry.key)], []
    errors = [UserError(f"{r.category}: {p}", file=file, key=entry.key) for r in rows for p in r.problems]
    notes = [f"{entry.key} {r.category}: {w}" for r in rows for w in r.warnings]
    return errors, notes


def check_suite_data(suite: Suite, *, defer_unreachable: bool) -> list[str]:
    """Raise ``SuiteErrors`` for every data problem; return the notes (deferred checks, count warnings)."""
    errors, notes = [], []
    for entry in suite.datasets:
        e, n = check_entry(entry, suite.file, defer_unreachable=defer_unreachable)
        errors += e
        notes += n
    if errors:
        raise SuiteErrors(errors)
    return notes
