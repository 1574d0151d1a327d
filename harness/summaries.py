"""The aggregate numbers a leaderboard shows, computed from the rows (and, for calibration, the
saved posteriors): the renderers only look them up and lay them out.

- ``ranked_values``: for each dataset × entry (``ENTRY``: detector, weights; or
  ``BY_CATEGORY``: one row per category, for the entry pages) the value of every metric in
  every column a ranked table can have: ``clean``; ``attack`` (one attack label at one
  threat model and task); ``robust`` (the per-image worst case at a threat model, from the
  robust records) and ``gap`` (clean − robust). Mean over categories per seed, then mean ±
  std over seeds (std only with several seeds).
- ``setting_means``: one record per detector × weights × dataset × attack setting (title,
  steps, norm, ε, knowledge; the clean rows are one setting): the mean over its rows of every
  metric, of the same images' clean metric (``clean_<metric>``), its categories and flags.
- ``reliability``: per detector × dataset, the Platt reliability curve of the clean cells and
  of the strongest attack setting (lowest mean image AUROC), categories pooled, with the ECE
  of the pooled points and the mean of the per-category ECEs (what the tables show).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .aggregate import robust_metrics, threat_of
from .calibration import ECE_BINS, ece
from .results import cell_scores
from .rows import is_clean, read_rows

log = logging.getLogger(__name__)
SUMMARY = "summary.json"  # ranked values, setting means, reliability curves: tied to results.jsonl by its sha256
ROBUST = "robust.jsonl"  # one robust record per line

ENTRY = ("detector", "weights")  # one entry of a ranked table
BY_CATEGORY = ("detector", "weights", "category")  # the entry pages' tables: one row per category
KEYS = ("detector", "weights", "dataset", "category", "seed")  # one fitted detector on one test set
SETTING = ("attack_title", "steps", "norm", "eps", "knowledge")  # what an attacked row of the cells table shows


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def entry_of(row: dict, by: tuple[str, ...]) -> tuple:
    return tuple((row.get(k) or "unknown") if k == "weights" else row.get(k) for k in by)


def seed_mean(per_seed: dict[int, list[float]]) -> tuple[float | None, float | None]:
    """(mean, std): the mean over categories per seed, then mean and std over seeds (std None
    with one seed; both None without values)."""
    seeds = [float(np.mean(v)) for v in per_seed.values() if v]
    if not seeds:
        return None, None
    return float(np.mean(seeds)), float(np.std(seeds)) if len(seeds) > 1 else None


CERTIFIED = ("image_auroc", "pixel_auroc")  # the metrics a certify row bounds (its ``certified_<metric>``)


def value_key(dataset: str, entry: tuple, column: str, metric: str, *, task: str | None = None, label: str | None = None,
              threat: tuple[str, float] | None = None) -> tuple:
    """How a ranked value is looked up: dataset, entry, column kind (clean, attack, robust,
    certified, gap), task and label (attack columns), threat model (all but clean), metric."""
    norm, eps = threat if threat is not None else (None, None)
    return dataset, tuple(entry), column, task, label, norm, eps, metric


def ranked_values(rows: list[dict], robust: list[dict], by: tuple[str, ...] = ENTRY) -> list[dict[str, Any]]:
    """Every ranked-table value of the rows, one record each (see the module docstring)."""
    per: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("status") != "ok":
            continue
        threat = threat_of(r)
        if r.get("attack_kind") == "certificate":  # its certified values, in the certified column at its radius
            for metric in CERTIFIED:
                value = (r.get("metrics") or {}).get(f"certified_{metric}")
                if is_number(value):
                    key = value_key(r["dataset"], entry_of(r, by), "certified", metric, threat=(str(r.get("norm")), float(r["eps"])))
                    per[key][r.get("seed", 0)].append(float(value))
            continue
        if threat is None and not is_clean(r):
            continue  # an attack at ε = 0 is in no ranked column
        for metric, value in (r.get("metrics") or {}).items():
            if not is_number(value):
                continue
            key = (value_key(r["dataset"], entry_of(r, by), "clean", metric) if threat is None else
                   value_key(r["dataset"], entry_of(r, by), "attack", metric, task=r.get("task"),
                             label=r.get("attack_label") or r["attack"], threat=threat))
            per[key][r.get("seed", 0)].append(float(value))
    for rec in robust:
        for name, value in rec.items():
            if name.startswith("robust_") and is_number(value):
                key = value_key(rec["dataset"], entry_of(rec, by), "robust", name.removeprefix("robust_"),
                                threat=(rec["norm"], rec["eps"]))
                per[key][rec.get("seed", 0)].append(float(value))
    records = [ranked_record(key, *seed_mean(values), by) for key, values in per.items()]
    for key, robust_values in list(per.items()):
        dataset, entry, column, _, _, norm, eps, metric = key
        clean = per.get(value_key(dataset, entry, "clean", metric))
        if column != "robust" or not clean:
            continue
        diffs = {s: [float(np.mean(clean[s])) - float(np.mean(robust_values[s]))] for s in clean
                 if s in robust_values and clean[s] and robust_values[s]}
        if diffs:
            records.append(ranked_record(value_key(dataset, entry, "gap", metric, threat=(norm, eps)), *seed_mean(diffs), by))
    return records


def protocol_mean(rows: list[dict], detector: str, dataset: str, task: str, metric: str,
                  protocol: tuple[str, int | None, str, float] | None) -> float | None:
    """The run's value of ``metric`` for one entry (detector label) on one dataset (registered
    name): its clean rows (``protocol`` None) or its rows of one (attack, steps — None: any —, norm, ε) and
    task; mean over categories per seed, then over seeds. None when no row has it."""
    per_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("status") != "ok" or r["detector"] != detector or (r.get("dataset_config") or {}).get("name") != dataset:
            continue
        if protocol is None:
            if not is_clean(r):
                continue
        elif is_clean(r) or r.get("task") != task or r["attack"] != protocol[0] or protocol[1] not in (None, r.get("steps")) or \
                r.get("norm") != protocol[2] or not math.isclose(float(r.get("eps") or 0), protocol[3], abs_tol=1e-9):
            continue
        value = (r.get("metrics") or {}).get(metric)
        if is_number(value):
            per_seed[r.get("seed", 0)].append(float(value))
    return seed_mean(per_seed)[0]


def ranked_record(key: tuple, mean: float | None, std: float | None, by: tuple[str, ...]) -> dict[str, Any]:
    dataset, entry, column, task, label, norm, eps, metric = key
    return {"dataset": dataset, **dict(zip(by, entry)), "column": column, "task": task, "label": label, "norm": norm,
            "eps": eps, "metric": metric, "mean": mean, "std": std}


def value_index(records: list[dict], by: tuple[str, ...] = ENTRY) -> dict[tuple, tuple[float | None, float | None]]:
    """The ranked records by ``value_key`` → (mean, std)."""
    index = {}
    for rec in records:
        threat = (rec["norm"], rec["eps"]) if rec["norm"] is not None else None
        key = value_key(rec["dataset"], entry_of(rec, by), rec["column"], rec["metric"], task=rec["task"],
                        label=rec["label"], threat=threat)
        index[key] = (rec["mean"], rec["std"])
    return index


def setting_of(row: dict) -> tuple:
    """The attack setting a cells-table row shows (every clean row is one setting: ``clean``)."""
    if is_clean(row):
        return ("clean",)
    return ("attack", row.get("attack_title") or row.get("attack_label") or row["attack"], *(row.get(k) for k in SETTING[1:]))


def setting_means(rows: list[dict]) -> list[dict[str, Any]]:
    """One record per detector × weights × dataset × attack setting, in first-seen order,
    then by detector, dataset and ε: means over its rows (every category and seed)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    clean = {tuple(entry_of(r, ("detector", "weights")) + tuple(r.get(k) for k in KEYS[2:])): r.get("metrics") or {}
             for r in ok if is_clean(r)}
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((*entry_of(r, ("detector", "weights", "dataset")), setting_of(r)), []).append(r)
    records = []
    for (detector, weights, dataset, setting), members in groups.items():
        first = members[0]
        rec: dict[str, Any] = {
            "detector": detector, "weights": weights, "dataset": dataset, "clean": setting == ("clean",),
            "attack": first["attack"], "attack_kind": first.get("attack_kind"), "attack_label": first.get("attack_label") or first["attack"],
            "attack_title": first.get("attack_title") or first.get("attack_label") or first["attack"],
            **{k: first.get(k) for k in ("steps", "norm", "eps", "knowledge", "task")},
            "categories": len({r["category"] for r in members}),
            "flags": sorted({f for r in members for f in r.get("flags") or []}),
        }
        metrics = sorted({m for r in members for m, v in (r.get("metrics") or {}).items() if is_number(v)})
        paired = [clean.get((detector, weights, dataset, r["category"], r.get("seed")), {}) for r in members]
        rec["metrics"] = {m: mean_of([(r.get("metrics") or {}).get(m) for r in members]) for m in metrics}
        rec["clean_metrics"] = {m: mean_of([p.get(m) for p in paired]) for m in metrics}
        records.append(rec)
    return sorted(records, key=lambda r: (r["detector"], r["dataset"], r["eps"] or 0.0))


def mean_of(values: list) -> float | None:
    """The mean of the numbers among ``values`` (None where there is none)."""
    numbers = [float(v) for v in values if is_number(v) and not math.isnan(v)]
    return float(np.mean(numbers)) if numbers else None


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean posterior, fraction anomalous, images) of the non-empty equal-width bins."""
    index = np.minimum((probs * bins).astype(int), bins - 1)
    used = [b for b in range(bins) if (index == b).any()]
    return (np.array([probs[index == b].mean() for b in used]), np.array([labels[index == b].mean() for b in used]),
            np.array([int((index == b).sum()) for b in used]))


def pooled(out_dir: Path, rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``key`` arrays (posteriors) and labels of ``rows``' cells, concatenated; cells whose
    arrays do not load are left out (with a warning naming the file)."""
    probs, labels = [], []
    for row in rows:
        data = cell_scores(out_dir, row) if (out_dir / "cells" / row["cell_id"] / "scores.npz").is_file() else None
        if data is not None and key in data:
            probs.append(data[key])
            labels.append(data["labels"])
    return (np.concatenate(probs), np.concatenate(labels)) if probs else None


def curve_record(name: str, rows: list[dict], points: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any] | None:
    if points is None:
        return None
    probs, labels = points
    x, y, counts = reliability_curve(probs, labels)
    return {"name": name, "x": x.tolist(), "y": y.tolist(), "images": counts.tolist(), "pooled_ece": ece(probs, labels),
            "table_ece": mean_of([(r.get("metrics") or {}).get("ece_platt") for r in rows])}


def reliability(out_dir: Path, rows: list[dict], settings: list[dict]) -> list[dict[str, Any]]:
    """Per detector × dataset: the clean and the strongest attack setting's reliability curves
    (Platt posteriors, categories pooled), each with its pooled ECE and the table's ECE (mean of
    the per-category ECEs). ``settings`` are ``setting_means(rows)``: the strongest setting is
    the one of lowest mean image AUROC."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    for detector, dataset in sorted({(r["detector"], r["dataset"]) for r in ok}):
        here = [r for r in ok if (r["detector"], r["dataset"]) == (detector, dataset)]
        clean_rows = [r for r in here if is_clean(r)]
        attacked = [s for s in settings if (s["detector"], s["dataset"]) == (detector, dataset) and not s["clean"]
                    and s["metrics"].get("image_auroc") is not None]
        clean = curve_record("clean", clean_rows, pooled(out_dir, clean_rows, "posterior_platt_clean"))
        if clean is None or not attacked:
            continue
        strongest = min(attacked, key=lambda s: s["metrics"]["image_auroc"])
        members = [r for r in here if setting_of(r) == setting_of(strongest)]
        adversarial = curve_record("strongest", members, pooled(out_dir, members, "posterior_platt"))
        out.append({"detector": detector, "dataset": dataset, "clean": clean, "strongest": adversarial,
                    "strongest_setting": {k: strongest[k] for k in ("attack", "attack_kind", "attack_title", *SETTING[1:])}})
    return out


@dataclass
class Aggregates:
    """Every aggregate of one run folder: what ``render`` and ``submit`` read."""

    robust: list[dict]
    ranked: list[dict]  # ENTRY
    ranked_by_category: list[dict]  # BY_CATEGORY
    settings: list[dict]
    reliability: list[dict]


def results_digest(out_dir: Path) -> str | None:
    try:
        return hashlib.sha256((out_dir / "results.jsonl").read_bytes()).hexdigest()
    except OSError:
        return None


def aggregate_run(out_dir: Path) -> Aggregates:
    """Compute every aggregate of ``out_dir`` from its rows and arrays, and write them
    (``robust.jsonl``, then ``summary.json``, which names the results it was computed from);
    a folder that cannot be written to still gets its aggregates, with a warning."""
    from robustad_bench.core.files import atomic_write_bytes

    digest = results_digest(out_dir)
    rows = read_rows(out_dir / "results.jsonl")
    robust = robust_metrics(out_dir, rows)
    settings = setting_means(rows)
    found = Aggregates(robust, ranked_values(rows, robust), ranked_values(rows, robust, BY_CATEGORY), settings,
                       reliability(out_dir, rows, settings))
    summary = {"results_sha256": digest, "version": __version__, "ranked": found.ranked,
               "ranked_by_category": found.ranked_by_category, "settings": settings, "reliability": found.reliability}
    try:
        atomic_write_bytes(out_dir / ROBUST, "".join(json.dumps(r, default=str) + "\n" for r in robust).encode())
        atomic_write_bytes(out_dir / SUMMARY, json.dumps(summary, default=str).encode())  # last: marks the set complete
    except OSError as err:
        log.warning("cannot write the aggregates into %s (%s); they are computed again next time", out_dir, err)
    return found


def read_aggregates(out_dir: Path) -> Aggregates:
    """The aggregates written for the current ``results.jsonl`` by this version; computed (and
    written) again when missing, unreadable or made for other rows."""
    try:
        summary = json.loads((out_dir / SUMMARY).read_text())
        fresh = summary.get("results_sha256") == results_digest(out_dir) and summary.get("version") == __version__
        robust = [json.loads(line) for line in (out_dir / ROBUST).read_text().splitlines() if line.strip()] if fresh else None
    except (OSError, ValueError, AttributeError):
        robust = None
    if robust is None:
        return aggregate_run(out_dir)
    return Aggregates(robust, summary["ranked"], summary["ranked_by_category"], summary["settings"], summary["reliability"])
