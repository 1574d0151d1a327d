"""The one table of metric columns: which metric each view shows, under which heading, how.

Views:
- ``ranked``: the ranked tables, one per dataset × task × metric of that task;
- ``settings``: "All cells", one line per detector × dataset × attack setting (the
  harness's ``setting_means``);
- ``categories``: "Per category", one line per cell.
Adding a metric column is registering the metric (``harness/metrics.py``) and adding one
``MetricColumn`` line here; ``leaderboard.md``, the site and ``robustad-bench list`` read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricColumn:
    metric: str  # the key in a row's ``metrics``
    heading: str
    views: tuple[str, ...]  # ranked, settings, categories
    percent: bool = True  # a fraction shown in percent, else the number (3 significant digits)
    higher_is_better: bool = True  # the sort direction: ranked tables rank by it, the site sorts by it first
    clean_too: bool = False  # settings: a "clean" column (the same images' clean value) before the attacked one
    attacked_only: bool = False  # settings: blank on the clean line (the metric compares attacked with clean)
    threshold: bool = False  # the heading names the F1 / G-mean threshold rule
    task: str | None = None  # ranked: the task whose table ranks by it
    title: str | None = None  # ranked: the table's title (default: the heading)
    before: str | None = None  # shown as "<before> → <metric>" (ECE of the raw score → of the Platt posterior)


COLUMNS: list[MetricColumn] = [
    MetricColumn("image_auroc", "Img AUROC", ("ranked", "settings", "categories"), clean_too=True, task="detection",
                 title="image AUROC"),
    MetricColumn("image_ap", "AP", ("categories",)),
    MetricColumn("f1", "F1", ("settings", "categories"), threshold=True),
    MetricColumn("f1_max", "F1-max", ("categories",)),
    MetricColumn("gmean", "G-mean", ("categories",), threshold=True),
    MetricColumn("pixel_auroc", "Px AUROC", ("ranked", "settings", "categories"), clean_too=True, task="localization",
                 title="pixel AUROC"),
    MetricColumn("aupro", "AUPRO", ("ranked", "settings", "categories"), task="localization"),
    MetricColumn("ece_platt", "ECE raw → Platt", ("settings",), higher_is_better=False, before="ece_raw"),
    MetricColumn("flag_auroc", "Flag AUROC", ("settings",), attacked_only=True),
]


def in_view(view: str) -> list[MetricColumn]:
    return [c for c in COLUMNS if view in c.views]


def ranked_tables() -> dict[str, list[MetricColumn]]:
    """Task → the columns whose ranked tables it has, in table order."""
    tasks: dict[str, list[MetricColumn]] = {}
    for column in in_view("ranked"):
        tasks.setdefault(column.task or "detection", []).append(column)
    return tasks


def number_text(value: Any, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.3g}"


def value_text(column: MetricColumn, metrics: dict) -> str:
    text = number_text(metrics.get(column.metric), column.percent)
    return f"{number_text(metrics.get(column.before), column.percent)} → {text}" if column.before else text


def heading(column: MetricColumn, tag: str) -> str:
    return f"{column.heading} ({tag})" if column.threshold else column.heading


@dataclass(frozen=True)
class Header:
    text: str
    first: str  # the site's first sort direction: desc (higher is better) or asc


def settings_headers(tag: str) -> list[Header]:
    """The metric headings of the settings view (``tag``: the threshold rule's)."""
    out = []
    for c in in_view("settings"):
        first = "desc" if c.higher_is_better else "asc"
        out += [Header(f"{c.heading} clean", first), Header(f"{c.heading} adv", first)] if c.clean_too else \
            [Header(heading(c, tag), first)]
    return out


def settings_cells(record: dict) -> list[str]:
    """One settings line's metric cells, in ``settings_headers`` order."""
    out = []
    attacked = not record["clean"]
    for c in in_view("settings"):
        if c.clean_too:
            out.append(value_text(c, record["clean_metrics"]))
        out.append(value_text(c, record["metrics"]) if attacked or not (c.clean_too or c.attacked_only) else "")
    return out


def category_headers(tag: str) -> list[Header]:
    return [Header(heading(c, tag), "desc" if c.higher_is_better else "asc") for c in in_view("categories")]


def category_cells(row: dict) -> list[str]:
    return [value_text(c, row.get("metrics") or {}) for c in in_view("categories")]
