"""The harness's aggregates against hand computations, and their files tied to the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustad_bench.harness.summaries import (
    BY_CATEGORY,
    SUMMARY,
    ranked_values,
    read_aggregates,
    setting_means,
    value_index,
    value_key,
)

THREAT = ("linf", 8 / 255)


def row(category, seed, attack, auroc, **extra):
    clean = attack == "none"
    return {"cell_id": f"d.{category}.{attack}.s{seed}", "status": "ok", "suite": "s", "detector": "d", "weights": "random", "dataset": "ds",
            "category": category, "seed": seed, "attack": attack, "attack_label": attack, "attack_kind": "none" if clean else "gradient",
            "attack_title": attack, "norm": None if clean else "linf", "eps": 0.0 if clean else THREAT[1], "steps": 0 if clean else 10,
            "knowledge": "none" if clean else "label", "task": "detection", "flags": [], "metrics": {"image_auroc": auroc, **extra}}


ROWS = [row("a", 0, "none", 0.9), row("b", 0, "none", 0.7), row("a", 1, "none", 0.8), row("b", 1, "none", 0.6),
        row("a", 0, "pgd", 0.5, flag_auroc=0.6), row("b", 0, "pgd", 0.3, flag_auroc=0.8),
        row("a", 1, "pgd", 0.2, flag_auroc=0.7), row("b", 1, "pgd", 0.2, flag_auroc=None)]
ROBUST = [{"detector": "d", "weights": "random", "dataset": "ds", "category": c, "seed": s, "norm": "linf", "eps": THREAT[1],
           "robust_image_auroc": v} for c, s, v in [("a", 0, 0.4), ("b", 0, 0.2), ("a", 1, 0.1), ("b", 1, 0.1)]]


def test_ranked_values_are_category_means_per_seed_then_mean_and_std_over_seeds():
    index = value_index(ranked_values(ROWS, ROBUST))
    entry = ("d", "random")
    clean = index[value_key("ds", entry, "clean", "image_auroc")]
    assert clean == pytest.approx((np.mean([0.8, 0.7]), np.std([0.8, 0.7])))  # seeds: (0.9+0.7)/2, (0.8+0.6)/2
    attack = index[value_key("ds", entry, "attack", "image_auroc", task="detection", label="pgd", threat=THREAT)]
    assert attack == pytest.approx((np.mean([0.4, 0.2]), np.std([0.4, 0.2])))
    robust = index[value_key("ds", entry, "robust", "image_auroc", threat=THREAT)]
    assert robust == pytest.approx((np.mean([0.3, 0.1]), np.std([0.3, 0.1])))
    gap = index[value_key("ds", entry, "gap", "image_auroc", threat=THREAT)]
    assert gap == pytest.approx((np.mean([0.8 - 0.3, 0.7 - 0.1]), np.std([0.5, 0.6])))
    by_category = value_index(ranked_values(ROWS, ROBUST, BY_CATEGORY), BY_CATEGORY)
    assert by_category[value_key("ds", ("d", "random", "b"), "clean", "image_auroc")] == pytest.approx((0.65, 0.05))


def test_one_seed_has_no_std():
    index = value_index(ranked_values([r for r in ROWS if r["seed"] == 0], []))
    assert index[value_key("ds", ("d", "random"), "clean", "image_auroc")] == pytest.approx((0.8, None))


def test_setting_means_pool_categories_and_seeds_and_pair_each_row_with_its_clean_row():
    clean, pgd = setting_means(ROWS)
    assert clean["clean"] and clean["categories"] == 2 and clean["metrics"]["image_auroc"] == pytest.approx(0.75)
    assert not pgd["clean"] and pgd["metrics"]["image_auroc"] == pytest.approx(0.3)
    assert pgd["clean_metrics"]["image_auroc"] == pytest.approx(0.75)
    assert pgd["metrics"]["flag_auroc"] == pytest.approx(0.7)  # the mean of the values there are (one is None)


def test_the_aggregate_files_follow_the_rows(tmp_path):
    """Written once; read back while results.jsonl is unchanged; computed again when it changes."""
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    first = read_aggregates(tmp_path)
    assert (tmp_path / SUMMARY).is_file() and (tmp_path / "robust.jsonl").is_file()
    summary = json.loads((tmp_path / SUMMARY).read_text())
    summary["settings"][0]["categories"] = 99  # what is on disk is what is read
    (tmp_path / SUMMARY).write_text(json.dumps(summary))
    assert read_aggregates(tmp_path).settings[0]["categories"] == 99
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:4]))  # other rows
    again = read_aggregates(tmp_path)
    assert again.settings[0]["categories"] == 2 and len(again.settings) == 1 < len(first.settings)
