"""A new metric column is one registered metric and one line of the columns table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustad_bench.harness.cli import main
from robustad_bench.harness.rows import read_rows


def test_a_new_metric_column_is_one_registered_metric_and_one_column_line(tiny_suite, tmp_path, monkeypatch):
    from robustad_bench.harness.metrics import METRICS, register_metric
    from robustad_bench.leaderboards import columns

    @register_metric("score_spread")
    def score_spread(labels, scores, **_):
        """Standard deviation of the image scores (a metric written in a test)."""
        return float(np.std(scores))

    monkeypatch.setattr(columns, "COLUMNS", [*columns.COLUMNS, columns.MetricColumn(
        "score_spread", "Score spread", ("ranked", "settings", "categories"), percent=False, higher_is_better=False,
        task="detection")])
    out = tmp_path / "out"
    try:
        assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    finally:
        METRICS.unregister("score_spread")
    rows = [r for r in read_rows(out / "results.jsonl") if r["status"] == "ok"]
    for row in rows:  # computed by the harness like every metric, from the saved scores
        scores = np.load(out / "cells" / row["cell_id"] / "scores.npz")["scores"]
        assert row["metrics"]["score_spread"] == pytest.approx(float(np.std(scores)))
    md, site = (out / "leaderboard.md").read_text(), (out / "site" / "index.html").read_text()
    assert "Score spread |" in md and ">Score spread</th>" in site
    for row in rows:  # each cell's value in the per-category table
        assert f"{row['metrics']['score_spread']:.3g}" in md
    settings = json.loads((out / "summary.json").read_text())["settings"]
    for record in settings:  # the harness's mean over categories in the all-cells table
        assert record["metrics"]["score_spread"] == pytest.approx(np.mean(
            [r["metrics"]["score_spread"] for r in rows if (r["detector"], r["dataset"], r["attack_label"], r["eps"]) ==
             (record["detector"], record["dataset"], record["attack_label"], record["eps"])]))
        assert f"{record['metrics']['score_spread']:.3g}" in md
    assert "detection: Score spread" in md and "detection: Score spread" in site  # its ranked tables
    assert 'data-first="asc"' in site  # lower is better: the site sorts it ascending first
