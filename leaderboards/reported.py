"""Numbers the papers report, on the board beside ours, and the reproduction check.

``leaderboards/reported/*.yaml`` (shipped with the package; ``--reported DIR`` adds more)
copy a paper's tables as printed: per table its task, metric and attack protocol, the
methods (each mapped to the registered detectors that implement it) and, per dataset, each
method's "clean / adversarial" pair in percent. ``render`` shows them as entries with
source "reported": beside the measured entries in a ranked table of the same dataset, task
and metric (the adversarial value in the column of the same attack, steps and threat
model), else in a table of their own. ``robustad-bench reproduce RUN_DIR`` sets each
reported value beside the run's measurement of the same method, dataset, task, metric and
protocol (``harness/summaries.protocol_mean``) and exits 3 when one differs by more than
the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import parse_float
from robustad_bench.harness.attacks.threat import Norm
from robustad_bench.harness.suite import read_yaml
from robustad_bench.harness.summaries import protocol_mean

from .board import Column, Table, Value, rank, threat_text

SHIPPED = Path(__file__).parent / "reported"
TASK_METRICS = {"detection": {"image_auroc": "image AUROC"}, "localization": {"pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}}
TABLE_KEYS = {"table", "task", "metric", "protocol", "methods", "rows"}


@dataclass(frozen=True)
class Protocol:
    attack: str
    steps: int | None  # None: the paper does not say (any steps of that attack match)
    norm: str
    eps: float

    @property
    def threat(self) -> tuple[str, float]:
        return self.norm, self.eps

    @property
    def name(self) -> str:
        return self.attack + (f"-{self.steps}" if self.steps is not None else "")

    def text(self) -> str:
        return f"{self.name.upper()} {threat_text(self.threat)}"


@dataclass(frozen=True)
class Reported:
    """One method's reported pair on one dataset (fractions, as our metrics are)."""

    method: str
    detectors: tuple[str, ...]  # the registered detectors that implement it
    dataset: str
    task: str
    metric: str
    protocol: Protocol
    clean: float | None
    adversarial: float | None
    paper: str
    table: str
    file: str


def read_reported(folders: list[Path] | None = None) -> list[Reported]:
    """Every reported value of the shipped files and of ``folders``; a malformed file is an
    error naming the file, the key and what is allowed."""
    found = []
    for folder in [SHIPPED, *(folders or [])]:
        if not Path(folder).is_dir():
            raise UserError(f"{str(folder)!r} is not a folder of reported tables (*.yaml)", key="--reported")
        for path in sorted(Path(folder).glob("*.yaml")):
            found += parse_reported(read_yaml(path), str(path))
    return found


def parse_reported(raw: Any, file: str) -> list[Reported]:
    if not isinstance(raw, dict) or not isinstance(raw.get("paper"), str) or not isinstance(raw.get("tables"), list):
        raise UserError("a reported file is a mapping with paper (text) and tables (a list)", file=file)
    return [value for i, table in enumerate(raw["tables"]) for value in parse_table(table, raw["paper"], file, f"tables[{i}]")]


def parse_table(table: Any, paper: str, file: str, key: str) -> list[Reported]:
    if not isinstance(table, dict) or set(table) != TABLE_KEYS:
        raise UserError(f"a reported table has exactly the keys {sorted(TABLE_KEYS)}", file=file, key=key)
    task, metric = table["task"], table["metric"]
    if metric not in TASK_METRICS.get(task, {}):
        raise UserError(f"task {task!r} with metric {metric!r}; allowed: {TASK_METRICS}", file=file, key=f"{key}.metric")
    protocol = parse_protocol(table["protocol"], file, f"{key}.protocol")
    methods = table["methods"]
    if not isinstance(methods, dict) or not all(isinstance(d, list) for d in methods.values()):
        raise UserError("methods maps each method to a list of detector names (empty: none here)", file=file, key=f"{key}.methods")
    out = []
    for dataset, pairs in (table["rows"] or {}).items():
        if not isinstance(pairs, list) or len(pairs) != len(methods) or not all(valid_pair(p) for p in pairs):
            raise UserError(f"{len(methods)} [clean, adversarial] pairs of percentages (or null), one per method",
                            file=file, key=f"{key}.rows.{dataset}")
        for (method, detectors), (clean, adversarial) in zip(methods.items(), pairs):
            out.append(Reported(method, tuple(detectors), str(dataset), task, metric, protocol, fraction(clean),
                                fraction(adversarial), paper, str(table["table"]), file))
    return out


def parse_protocol(raw: Any, file: str, key: str) -> Protocol:
    try:
        steps = None if raw["steps"] is None else int(raw["steps"])
        protocol = Protocol(str(raw["attack"]), steps, str(raw["norm"]), parse_float(raw["eps"]))
    except (TypeError, KeyError, ValueError) as err:
        raise UserError(f"protocol needs attack, steps, norm and eps ({err})", file=file, key=key) from None
    if protocol.norm not in {n.value for n in Norm}:
        raise UserError(f"norm {protocol.norm!r}; allowed: {[n.value for n in Norm]}", file=file, key=f"{key}.norm")
    return protocol


def valid_pair(pair: Any) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100) for v in pair)


def fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100


def protocol_column(protocol: Protocol) -> Column:
    return Column(f"reported@{protocol}", f"{protocol.name} (reported)", "attack", protocol.threat, "white-box")


def add_reported(tables: list[Table], reported: list[Reported]) -> list[Table]:
    """Put each reported value in its table: the measured table of the same dataset, task and
    metric when there is one, else a table of reported values; returns the tables, ranked."""
    by_table: dict[tuple, list[Reported]] = {}
    for value in reported:
        by_table.setdefault((value.dataset, value.task, TASK_METRICS[value.task][value.metric]), []).append(value)
    index = {(t.dataset, t.task, t.title): t for t in tables}
    for (dataset, task, title), values in by_table.items():
        table = index.get((dataset, task, title))
        if table is None:
            table = Table(dataset, task, values[0].metric, title, values[0].protocol.threat, [Column("clean", "clean", "clean")])
            tables.append(table)
        rows: dict[tuple[str, str], dict] = {}  # one row per method and table of a paper, whatever its attacks
        for value in values:
            column = matching_column(table, value.protocol)
            if column is None:
                column = protocol_column(value.protocol)
                table.columns.append(column)
            row = rows.get((value.method, value.table))
            if row is None:
                row = rows[(value.method, value.table)] = {
                    "detector": value.method, "weights": "as published", "budget": "", "flags": [], "source": "reported",
                    "citation": f"{value.table}, {value.paper}", "protocol": value.protocol.text(),
                    "values": {"clean": Value(value.clean)}}
                table.rows.append(row)
            elif value.clean is not None:
                row["values"]["clean"] = Value(value.clean)
            row["values"][column.key] = Value(value.adversarial)
        for row in table.rows:  # n/a where a row has no value (columns added for reported values, other attacks)
            for c in table.columns:
                row["values"].setdefault(c.key, Value(None))
        rank(table)
    return sorted(tables, key=lambda t: (reported_only(t), t.dataset, t.task))  # measured tables first


def reported_only(table: Table) -> bool:
    return bool(table.rows) and all(r.get("source") == "reported" for r in table.rows)


def matching_column(table: Table, protocol: Protocol) -> Column | None:
    """The table's column of the protocol's attack, steps and threat model (measured or reported)."""
    for column in table.columns:
        if column.kind == "attack" and column.threat is not None and column.threat[0] == protocol.norm and \
                math.isclose(column.threat[1], protocol.eps, abs_tol=1e-9) and \
                (column.key == f"reported@{protocol}" or
                 (column.attack == protocol.attack and protocol.steps in (None, column.steps))):
            return column
    return None


@dataclass(frozen=True)
class Comparison:
    reported: Reported
    setting: str  # clean | the protocol
    detector: str  # the measured entry (detector label)
    measured: float
    reported_value: float

    @property
    def delta(self) -> float:
        """Measured − reported, in percentage points."""
        return 100 * (self.measured - self.reported_value)


def compare_reported(rows: list[dict], reported: list[Reported]) -> list[Comparison]:
    """Every reported value the run measured too: same registered detector, dataset (its
    registered name), task, metric and, for the adversarial value, attack, steps and threat model."""
    by_entry: dict[tuple, list[dict]] = {}  # (label, registered detector, registered dataset) → its rows, indexed once
    for r in rows:
        if r.get("status") == "ok":
            key = (r["detector"], (r.get("detector_config") or {}).get("name"), (r.get("dataset_config") or {}).get("name"))
            by_entry.setdefault(key, []).append(r)
    out = []
    for value in reported:
        for (label, name, dataset), mine in sorted(by_entry.items()):
            if name not in value.detectors or dataset != value.dataset:
                continue
            for setting, number, protocol in (("clean", value.clean, None), (value.protocol.text(), value.adversarial, value.protocol)):
                measured = protocol_mean(mine, label, dataset, value.task, value.metric,
                                         None if protocol is None else (protocol.attack, protocol.steps, protocol.norm, protocol.eps))
                if number is not None and measured is not None:
                    out.append(Comparison(value, setting, label, measured, number))
    return out
