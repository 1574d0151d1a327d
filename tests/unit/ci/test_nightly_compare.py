"""The nightly comparison matches cells by what they measure and reports real moves only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("nightly", Path(__file__).resolve().parents[3] / "ci" / "nightly.py")
nightly = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nightly)


def row(cell_id, auroc, attack="pgd"):
    return {"cell_id": cell_id, "status": "ok", "detector": "d", "dataset": "x", "category": "c", "attack": attack,
            "norm": "linf", "eps": 0.03, "steps": 10, "task": "detection", "seed": 0, "metrics": {"image_auroc": auroc}}


def test_compare_reports_changes_beyond_tolerance_only():
    old = {tuple(r.get(k) for k in nightly.MATCH): r for r in [row("a.1", 0.50), row("b", 0.9, attack="fgsm")]}
    new = {tuple(r.get(k) for k in nightly.MATCH): r for r in [row("a.2", 0.51), row("c", 0.1, attack="none")]}
    lines = nightly.compare(old, new, tolerance=0.02)
    assert any(line.startswith("| new | c") for line in lines)
    assert any(line.startswith("| gone | b") for line in lines)
    assert not any("changed" in line for line in lines)  # 0.50 → 0.51 is within tolerance
    new2 = {k: {**v, "metrics": {"image_auroc": 0.2}} for k, v in new.items()}
    assert any("| changed | a.2 | image_auroc | 0.5000 | 0.2000 |" == line for line in nightly.compare(old, new2, 0.02))
