"""The main view: one table per dataset × task, one row per entry, ranked by robust AUROC.

An entry is a detector label with its weights and training budget. Columns: the clean
metric; every attack × ε of the task, grouped by threat model (norm, ε); the robust metric
of each threat model (the per-image worst case over all its attacks, ``harness/aggregate.py``); and
the gap (clean − robust) at the headline threat model, by which the rows are ranked.
Values are means over categories, then mean ± std over seeds when there are several, computed
by the harness (``harness/summaries.py``) and only looked up here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from robustad_bench.harness.aggregate import threat_of
from robustad_bench.harness.attacks.threat import Norm
from robustad_bench.harness.rows import is_clean
from robustad_bench.harness.summaries import ENTRY, entry_of, value_index, value_key

from .columns import ranked_tables


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: str  # clean | attack | robust | certified | gap
    threat: tuple[str, float] | None = None
    badge: str = ""  # what the attacker knows and uses: "white-box · label", "score-only", ...
    attack: str | None = None  # attack columns: the registered attack and its steps (what a reported protocol matches)
    steps: int | None = None

    @property
    def heading(self) -> str:
        return f"{threat_text(self.threat)} · {self.title}" if self.kind in ("attack", "robust", "certified") else self.title


BADGES = {"gradient": "white-box", "score-only": "score-only", "surrogate": "surrogate", "transfer": "transfer", "noise": "noise"}


WARNINGS = {  # flags that put an entry's robust numbers in doubt: shown beside its name and above its table
    "unbounded-not-broken": "an unbounded attack (L∞ ε = 1) does not break it, so a gradient is masked and its robust "
                            "numbers are likely overstated (run the gradient attacks with bpda: true)",
    "score-only": "it has no input gradient, so no gradient attack ran on it: its robust numbers rest on score-only and "
                  "transfer attacks alone and may be overstated (ranked after the entries gradient attacks evaluated)",
}


def badge(row: dict) -> str:
    kind = row.get("attack_kind") or "gradient"
    text = BADGES.get(kind, kind)
    return f"{text} · {row.get('knowledge')}" if kind in ("gradient", "transfer") and row.get("knowledge") else text


@dataclass
class Value:
    mean: float | None
    std: float | None = None  # over seeds, when there are several

    def text(self, percent: bool = True) -> str:
        if self.mean is None:
            return "n/a"
        scale = 100 if percent else 1
        body = f"{scale * self.mean:.1f}"
        return body if self.std is None else f"{body} ± {scale * self.std:.1f}"


@dataclass
class Table:
    dataset: str
    task: str
    metric: str
    title: str
    headline: tuple[str, float] | None
    columns: list[Column]
    higher_is_better: bool = True  # the ranked metric's direction (the metric columns table says)
    rows: list[dict] = field(default_factory=list)  # {"entry", "detector", "weights", "budget", "values": {key: Value}}


def eps_text(eps: float) -> str:
    """``8/255`` for multiples of 1/255, else 4 significant digits; ``0`` for the clean cell."""
    if eps == 0:
        return "0"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def threat_text(threat: tuple[str, float]) -> str:
    return f"{'L∞' if threat[0] == 'linf' else 'L2'} ε={eps_text(threat[1])}"


def budget_text(config: dict | None) -> str:
    """The training budget an entry states (epochs of a trained detector, shots of a few-shot one)."""
    config = config or {}
    parts = []
    if config.get("epochs"):
        parts.append(f"{config['epochs']} epochs")
    if config.get("shots"):
        parts.append(f"{config['shots']}-shot")
    return ", ".join(parts)


def choose_headline(threats: set[tuple[str, float]], wanted: tuple[str, float] | None) -> tuple[str, float] | None:
    """The suite's headline threat model when present, else the largest L∞ ε below 1 (else the
    largest ε): L∞ ε = 1 reaches any image, a validity check (d), not a threat model to rank by."""
    if wanted is not None and any(t[0] == wanted[0] and abs(t[1] - wanted[1]) < 1e-9 for t in threats):
        return next(t for t in threats if t[0] == wanted[0] and abs(t[1] - wanted[1]) < 1e-9)
    linf = [t for t in threats if t[0] == Norm.LINF and t[1] < 1] or [t for t in threats if t[0] == Norm.LINF]
    pool = linf or list(threats)
    return max(pool, key=lambda t: t[1]) if pool else None


def main_tables(rows: list[dict], ranked: list[dict], headline: tuple[str, float] | None = None,
                by: tuple[str, ...] = ENTRY) -> list[Table]:
    """The ranked tables of ``rows``, their values looked up in ``ranked`` (the harness's
    ``ranked_values`` records for the same rows, grouped ``by``)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    index = value_index(ranked, by)
    tables = []
    for dataset in sorted({r["dataset"] for r in ok}):
        in_dataset = [r for r in ok if r["dataset"] == dataset]
        for task, metric_columns in ranked_tables().items():  # the metric columns table says which tables there are
            task_rows = [r for r in in_dataset if r.get("task") == task and threat_of(r) is not None]
            for column in metric_columns:
                metric = column.metric
                clean_rows = [r for r in in_dataset if is_clean(r) and (r.get("metrics") or {}).get(metric) is not None]
                if not clean_rows or not task_rows:
                    continue
                certified = {(str(r["norm"]), float(r["eps"])) for r in in_dataset if r.get("attack_kind") == "certificate"
                             and (r.get("metrics") or {}).get(f"certified_{metric}") is not None}
                table = Table(dataset, task, metric, column.title or column.heading, None, [], column.higher_is_better)
                tables.append(build_table(table, clean_rows, task_rows, index, headline, by, certified))
    return tables


def build_table(table: Table, clean_rows, task_rows, index, headline, by, certified: set | frozenset = frozenset()) -> Table:
    """Fill ``table`` (dataset, task, metric, title): its columns from the rows, its values from
    ``index``; ``certified``: the threat models (L2 radii) with certified values, a column each
    beside the robust one (certified ≤ robust: the bracket)."""
    dataset, task, metric = table.dataset, table.task, table.metric
    threats = sorted({threat_of(r) for r in task_rows} | set(certified), key=lambda t: (t[0] != Norm.LINF, t[0], t[1]))
    chosen = choose_headline(set(threats), headline)
    columns = [Column("clean", "clean", "clean")]
    for threat in threats:
        first = {}
        for r in task_rows:
            if threat_of(r) == threat:
                first.setdefault(r.get("attack_label") or r["attack"], r)
        columns += [Column(f"{label}@{threat}", label, "attack", threat, badge(first[label]), first[label]["attack"],
                           first[label].get("steps")) for label in sorted(first)]
        if first:
            columns.append(Column(f"robust@{threat}", "robust", "robust", threat))
        if threat in certified:
            columns.append(Column(f"certified@{threat}", "certified", "certified", threat, "certificate"))
    if chosen is not None:
        columns.append(Column("gap", f"gap ({threat_text(chosen)})", "gap", chosen))
    info, flags = {}, defaultdict(set)
    for r in clean_rows + task_rows:
        info[entry_of(r, by)] = budget_text(r.get("detector_config"))
    for r in task_rows:
        flags[entry_of(r, by)].update(r.get("flags") or [])
    table.headline, table.columns = chosen, columns
    for entry, budget in info.items():
        values = {c.key: Value(*index.get(value_key(dataset, entry, c.kind, metric, task=task if c.kind == "attack" else None,
                                                     label=c.title if c.kind == "attack" else None, threat=c.threat),
                                           (None, None)))
                  for c in columns}
        name, weights = (entry[0], entry[1]) if by == ENTRY else (entry[-1], "")
        table.rows.append({"detector": name, "weights": "random init" if weights == "random" else weights,
                           "budget": budget, "values": values, "flags": sorted(flags[entry]), "source": "measured here",
                           "warnings": [WARNINGS[f] for f in sorted(flags[entry]) if f in WARNINGS]})
    return rank(table)


def rank(table: Table) -> Table:
    """Rows by robust value at the headline threat model, best first (no value last); a table
    without robust values (reported ones only) by its first attack column there. Score-only
    entries come after every entry the gradient attacks evaluated: their robust values rest on
    weaker attacks, so they never outrank one that faced the stronger ones."""
    at_headline = [c.key for c in table.columns if c.kind in ("robust", "attack") and c.threat == table.headline]
    key = f"robust@{table.headline}" if f"robust@{table.headline}" in at_headline else (at_headline or ["clean"])[0]
    sign = -1.0 if table.higher_is_better else 1.0
    table.rows.sort(key=lambda r: ("score-only" in r.get("flags", ()), r["values"][key].mean is None,
                                   sign * (r["values"][key].mean or 0.0), r["detector"]))
    return table
