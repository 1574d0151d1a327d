"""The renderer shows user text as text: labels and categories cannot inject HTML or break a table."""

from __future__ import annotations

import json

import numpy as np

from robustad_bench.leaderboards import render


def test_labels_and_categories_are_escaped_in_the_markdown(tmp_path):
    row = {"cell_id": "c1", "suite": "s", "detector": "<img src=x onerror=alert(1)>", "dataset": "a|b",
           "category": "<script>x</script>", "attack": "none", "attack_label": "none", "norm": None, "eps": 0.0,
           "steps": 0, "knowledge": "none", "task": "detection", "seed": 0, "status": "ok", "weights": "random",
           "metrics": {"image_auroc": 0.5}, "flags": []}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "cells" / "c1").mkdir(parents=True)
    np.savez(tmp_path / "cells" / "c1" / "scores.npz", labels=np.array([0, 1]), scores=np.array([0.1, 0.2]))
    md, site, _ = render(tmp_path)
    text = md.read_text()
    assert "<img" not in text and "<script>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "a\\|b" in text
    assert "<script>x" not in site.read_text()  # the page is autoescaped


def test_a_corrupt_scores_file_does_not_stop_render(tmp_path, caplog):
    row = {"cell_id": "c1", "suite": "s", "detector": "d", "dataset": "t", "category": "c", "attack": "none",
           "attack_label": "none", "norm": None, "eps": 0.0, "steps": 0, "knowledge": "none", "task": "detection",
           "seed": 0, "status": "ok", "weights": "random", "metrics": {"image_auroc": 0.5}, "flags": []}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n42\n")
    (tmp_path / "cells" / "c1").mkdir(parents=True)
    (tmp_path / "cells" / "c1" / "scores.npz").write_bytes(b"garbage")
    md, _, _ = render(tmp_path)
    assert "| d " in md.read_text()
    assert "scores.npz" in caplog.text and "results.jsonl:2" in caplog.text
