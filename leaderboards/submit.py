"""Model cards and submitted entries (RobustBench's ``model_info``, for anomaly detection).

``robustad-bench submit RUN_DIR --card CARD.yaml --out leaderboards/entries/`` validates the
card against ``schemas/model_card.schema.json`` and writes one JSON file: the card, the
entry's numbers from the run (the ranked tables' values and the per-category ones), and
the hashes that pin them (suite, config hashes, dataset fingerprints, package version).
A lab submits by opening a pull request that adds that one file; ``render`` merges every
file of ``leaderboards/entries/`` (and ``--entries DIR``) into the ranked tables, marked
"submitted" beside the entries "measured here".
"""

from __future__ import annotations

import json
from pathlib import Path

from robustad_bench.core.errors import SuiteErrors, UserError
from robustad_bench.harness.results import read_run_info
from robustad_bench.harness.rows import read_rows
from robustad_bench.harness.suite import read_yaml
from robustad_bench.harness.summaries import read_aggregates

from .board import Table, Value, main_tables, rank
from .entries import category_tables, slug

SCHEMA = Path(__file__).parent / "schemas" / "model_card.schema.json"
FORMAT = 1  # of the entry file


def card_problems(card: object, file: str) -> list[UserError]:
    """Every way ``card`` breaks the schema, each naming its key path."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    problems = []
    for error in sorted(validator.iter_errors(card), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(card)"
        problems.append(UserError(error.message, file=file, key=path))
    return problems


def read_card(path: str | Path) -> dict:
    card = read_yaml(Path(path))
    if problems := card_problems(card, str(path)):
        raise SuiteErrors(problems)
    return card


def entry_file(run_dir: Path, card: dict, card_path: str) -> dict:
    """The submitted entry: card, the run's numbers for its detector, and what pins them."""
    rows = [r for r in read_rows(run_dir / "results.jsonl") if r.get("status") == "ok"]
    if not rows:
        raise UserError(f"{str(run_dir / 'results.jsonl')!r} holds no finished cell", key="RUN_DIR")
    detectors = sorted({r["detector"] for r in rows})
    detector = card.get("detector") or (detectors[0] if len(detectors) == 1 else None)
    if detector not in detectors:
        raise UserError(f"the run measured {detectors}; say which one the card describes with detector: LABEL",
                        file=card_path, key="detector")
    mine = [r for r in rows if r["detector"] == detector]
    aggregates = read_aggregates(run_dir)  # the records render reads: one place computes them
    tables = main_tables(mine, aggregates.ranked)
    return {
        "format": FORMAT, "card": card, "detector": detector,
        "tables": [{"dataset": t.dataset, "task": t.task, "metric": t.title,
                    "values": {c.heading: t.rows[0]["values"][c.key].mean for c in t.columns}} for t in tables if t.rows],
        "per_category": [{"dataset": t.dataset, "task": t.task, "metric": t.title,
                          "rows": {r["detector"]: {c.heading: r["values"][c.key].mean for c in t.columns} for r in t.rows}}
                         for t in category_tables(mine, aggregates.ranked_by_category)],
        "suites": read_run_info(run_dir),
        "config_hashes": sorted({r["config_hash"] for r in mine if r.get("config_hash")}),
        "dataset_fingerprints": sorted({f"{r['dataset']}/{r['category']}:{r.get('dataset_fingerprint')}" for r in mine}),
        "versions": mine[0].get("versions"),
    }


def submit(run_dir: str | Path, card_path: str | Path, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "results.jsonl").is_file():
        raise UserError(f"{str(run_dir)!r} holds no results.jsonl; give a run folder", key="RUN_DIR")
    card = read_card(card_path)
    entry = entry_file(run_dir, card, str(card_path))
    if out.exists() and not out.is_dir():
        raise UserError(f"{str(out)!r} is a file; --out must be a folder of entry files", key="--out")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug(card['name'])}.json"
    if path.is_symlink():
        raise UserError(f"{str(path)!r} is a symbolic link; an entry file is written in place, never through a link", key="--out")
    if path.is_file():  # a resubmission of the same entry replaces it; another entry whose name maps here does not
        try:
            previous = json.loads(path.read_text()).get("card", {}).get("name")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != card["name"]:
            raise UserError(f"{str(path)!r} holds the entry {previous!r}, and the card's name {card['name']!r} maps to the same "
                            "file; give the card a distinct name", file=str(card_path), key="name")
    path.write_text(json.dumps(entry, indent=1, sort_keys=True, default=str) + "\n")
    return path


def read_entries(folders: list[Path]) -> list[dict]:
    """Submitted entries whose cards still validate; a broken file is an error naming it."""
    entries = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise UserError(f"cannot read submitted entry {str(path)!r}: {err}") from None
            if not isinstance(entry, dict) or entry.get("format") != FORMAT or "card" not in entry or \
                    not isinstance(entry.get("tables"), list) or not all(entry_table(t) for t in entry["tables"]):
                raise UserError(f"{str(path)!r} is not a robustad-bench entry file (format {FORMAT}: card, and tables of "
                                "dataset, task, metric and values); write it with robustad-bench submit")
            if problems := card_problems(entry["card"], str(path)):
                raise SuiteErrors(problems)
            entries.append({**entry, "file": path})
    return entries


def entry_table(table: object) -> bool:
    """Whether one of an entry file's ``tables`` has the fields ``merge`` reads."""
    return isinstance(table, dict) and all(isinstance(table.get(k), str) for k in ("dataset", "task", "metric")) and \
        isinstance(table.get("values"), dict)


def merge(tables: list[Table], entries: list[dict]) -> None:
    """Add each submitted entry to the tables it has values for (by dataset, task, metric and
    column heading), marked submitted; the table is ranked again."""
    for t in tables:
        for entry in entries:
            match = next((e for e in entry["tables"] if (e["dataset"], e["task"], e["metric"]) == (t.dataset, t.task, t.title)), None)
            if match is None:
                continue
            card = entry["card"]
            values = {c.key: Value(match["values"].get(c.heading)) for c in t.columns}
            t.rows.append({"detector": card["name"], "weights": card["weights"], "budget": card["training_budget"],
                           "values": values, "flags": [], "source": "submitted", "card": card,
                           "file": f"submitted/{entry['file'].name}"})
        rank(t)
