"""The embedded default suite end to end (minutes on a CPU): run with ``pytest -m slow``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustad_bench.harness.cli import main

QUICK = Path(__file__).resolve().parents[2] / "suites" / "quick.yaml"


@pytest.mark.slow
def test_quick_suite_runs_and_attacks_bite(tmp_path):
    out = tmp_path / "quick"
    assert main(["run", str(QUICK), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 80 and all(r["status"] == "ok" for r in rows)
    from robustad_bench.harness.results import row_problems

    assert [p for row in rows for p in row_problems(row)] == []  # rows as docs/results.md and the schema say
    detectors = {r["detector"]: r["weights"] for r in rows}
    assert detectors == {"patchcore-r18": "random", "anomalydino-vitt16": "random", "zarnd-r18": "random",
                         "patchguard-vitt16": "trained from random init"}
    for r in rows:
        metrics, attacked = r["metrics"], r["attack"] != "none"
        assert all(metrics[k] is not None for k in ("ece_raw", "ece_platt", "entropy_clean")), r["cell_id"]
        assert (metrics["entropy_adv"] is not None) == attacked == (metrics["flag_auroc"] is not None)
        data = np.load(out / "cells" / r["cell_id"] / "scores.npz")
        assert r["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(data["labels"], data["scores"]), abs=1e-6)
    for detector in detectors:
        for dataset in ("textures", "digits"):
            mine = [r for r in rows if r["detector"] == detector and r["dataset"] == dataset]
            clean = np.mean([r["metrics"]["image_auroc"] for r in mine if r["attack"] == "none"])
            pgd8 = np.mean([r["metrics"]["image_auroc"] for r in mine if r["attack"] == "pgd" and r["eps"] > 0.03])
            assert pgd8 < clean - 0.3, (detector, dataset, clean, pgd8)
            if detector == "patchcore-r18":
                assert clean > 0.8, (dataset, clean)
    board = (out / "leaderboard.md").read_text()
    assert all(f"| {d}" in board for d in detectors)
    assert "## Ranked by robust AUROC" in board and "L∞ ε=8/255 · robust" in board
    site = out / "site"
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size < 5 * 2**20, f"the quick suite's site is {size / 2**20:.1f} MB"  # with its adversarial examples
    assert len(list((site / "entries").rglob("*_adv.png"))) >= len(detectors) * 3  # examples for every entry
