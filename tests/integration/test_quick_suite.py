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
    assert len(rows) == 20 and all(r["status"] == "ok" and r["weights"] == "random" for r in rows)
    for r in rows:
        data = np.load(out / "cells" / r["cell_id"] / "scores.npz")
        assert r["metrics"]["image_auroc"] == pytest.approx(roc_auc_score(data["labels"], data["scores"]), abs=1e-6)
    for dataset in ("textures", "digits"):
        clean = np.mean([r["metrics"]["image_auroc"] for r in rows if r["dataset"] == dataset and r["attack"] == "none"])
        pgd8 = np.mean([r["metrics"]["image_auroc"] for r in rows if r["dataset"] == dataset and r["attack"] == "pgd" and r["eps"] > 0.03])
        assert clean > 0.8 and pgd8 < clean - 0.5, (dataset, clean, pgd8)
