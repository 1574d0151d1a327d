"""``render --compare PREV_DIR``: what moved between two runs of a suite, and what regressed.

Every value of the ranked main tables is matched by (dataset, task, metric, entry, column).
A regression is a change beyond the tolerance that makes the board less trustworthy: a
clean metric that fell (the detector or data changed), an attacked or robust metric that
rose (an attack got weaker), or a value the previous run had and this one lacks. A fall
under attack is listed as a change, not a regression (the attacks got stronger).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .board import Table


@dataclass(frozen=True)
class Change:
    where: str  # "dataset · task · metric · entry · column"
    before: float | None
    after: float | None
    regression: bool

    def line(self) -> str:
        def text(v):
            return "missing" if v is None else f"{100 * v:.1f}"

        delta = "" if self.before is None or self.after is None else f" ({100 * (self.after - self.before):+.1f})"
        return f"- {'**REGRESSION** ' if self.regression else ''}{self.where}: {text(self.before)} → {text(self.after)}{delta}"


def values(tables: list[Table]) -> dict[tuple, tuple[str, float | None]]:
    """(dataset, task, metric, entry, column key) → (column kind, mean)."""
    out = {}
    for t in tables:
        for r in t.rows:
            if r.get("source") == "reported":  # a paper's number, not a measurement: never a change
                continue
            for c in t.columns:
                out[(t.dataset, t.task, t.title, r["detector"], c.heading if c.kind != "gap" else "gap")] = (c.kind, r["values"][c.key].mean)
    return out


def write_board(path: Path, tables: list[Table]) -> None:
    """``board.json``: every value of the ranked tables, what a later ``--compare`` reads
    (a published site keeps it; its scores.npz are not published)."""
    entries = [[*key, kind, mean] for key, (kind, mean) in values(tables).items()]
    path.write_text(json.dumps({"values": entries}, indent=0) + "\n")


def read_board(path: Path) -> dict[tuple, tuple[str, float | None]]:
    entries = json.loads(path.read_text())["values"]
    return {tuple(e[:5]): (e[5], e[6]) for e in entries}


def compare(now: dict[tuple, tuple[str, float | None]], before: dict[tuple, tuple[str, float | None]],
            tolerance: float) -> list[Change]:
    changes = []
    for key, (kind, old) in sorted(before.items(), key=lambda kv: kv[0]):
        new = now.get(key, (kind, None))[1]
        where = " · ".join(str(k) for k in key)
        if old is not None and new is None:
            changes.append(Change(where, old, None, True))
        elif old is not None and abs(new - old) > tolerance:
            worse = new < old if kind == "clean" else new > old if kind in ("attack", "robust") else False
            changes.append(Change(where, old, new, worse))
    changes += [Change(" · ".join(str(k) for k in key), None, v, False) for key, (_, v) in sorted(now.items()) if key not in before]
    return changes


def changes_markdown(changes: list[Change], previous: str, tolerance: float) -> str:
    regressions = [c for c in changes if c.regression]
    head = [f"# Changes since {previous}", "",
            f"Tolerance {100 * tolerance:.1f} AUROC points. {len(regressions)} regression(s), {len(changes)} change(s).", ""]
    body = [c.line() for c in regressions] + [c.line() for c in changes if not c.regression]
    return "\n".join(head + (body or ["No value moved beyond the tolerance."])) + "\n"
