"""Reliability diagrams (clean vs adversarial) per detector and dataset, as SVG files.

Reads the Platt posteriors each cell saved in ``cells/<id>/scores.npz``: the clean curve
pools the clean posteriors of every category; the adversarial curve pools the posteriors
of the strongest attack (lowest mean image AUROC) over the same categories. Each point is
labelled with its bin's number of images; the legend gives the table's ECE (the mean of
the per-category ECEs, 15 equal-width bins) and, beside it, the ECE of the pooled points.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from robustad_bench.harness.calibration import ECE_BINS, ece
from robustad_bench.harness.results import load_scores


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean posterior, fraction anomalous, images) of the non-empty equal-width bins."""
    index = np.minimum((probs * bins).astype(int), bins - 1)
    used = [b for b in range(bins) if (index == b).any()]
    return (np.array([probs[index == b].mean() for b in used]), np.array([labels[index == b].mean() for b in used]),
            np.array([int((index == b).sum()) for b in used]))


def _pooled(out_dir: Path, cell_ids, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    probs, labels = [], []
    for cell_id in cell_ids:
        path = out_dir / "cells" / cell_id / "scores.npz"
        data = load_scores(path) if path.is_file() else None  # an unreadable file is skipped with a warning
        if data is not None and key in data:
            probs.append(data[key])
            labels.append(data["labels"])
    return (np.concatenate(probs), np.concatenate(labels)) if probs else None


def mean_ece(rows: pd.DataFrame) -> float:
    """The Platt ECE the table shows for these cells: the mean over categories."""
    return float(rows["ece_platt"].mean()) if "ece_platt" in rows else float("nan")


def write_reliability_diagrams(out_dir: Path, frame: pd.DataFrame, attack_text) -> list[Path]:
    """One SVG per detector × dataset under ``out_dir/plots``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[frame["status"] == "ok"]
    written = []
    for (detector, dataset), group in ok.groupby(["detector", "dataset"], sort=True):
        clean = _pooled(out_dir, group[group["clean"]]["cell_id"], "posterior_platt_clean")
        attacked = group[~group["clean"]]
        if clean is None or attacked.empty:
            continue
        attacked = attacked.assign(text=attacked.apply(attack_text, axis=1))
        strongest = attacked.groupby("text")["image_auroc"].mean().idxmin()
        cells = attacked[attacked["text"] == strongest]["cell_id"]
        adversarial = _pooled(out_dir, cells, "posterior_platt")
        fig, ax = plt.subplots(figsize=(4, 4.6))
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
        table_ece = {"clean": mean_ece(group[group["clean"]]),  # as the table shows it
                     strongest: mean_ece(attacked[attacked["text"] == strongest])}
        for pooled, name, colour in ((clean, "clean", "#1f77b4"), (adversarial, strongest, "#d62728")):
            if pooled is None:
                continue
            probs, labels = pooled
            x, y, counts = reliability_curve(probs, labels)
            ax.plot(x, y, marker="o", color=colour, label=f"{name}: ECE {100 * table_ece[name]:.1f} (table: mean over categories; "
                                                          f"pooled {100 * ece(probs, labels):.1f})")
            for xi, yi, n in zip(x, y, counts):  # images per bin: a point of 2 images says little
                ax.annotate(str(n), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colour)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Platt posterior P(anomalous)", ylabel="fraction anomalous",
               title=f"{detector} / {dataset}")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # outside: never over points
        fig.tight_layout()
        path = out_dir / "plots" / f"reliability_{re.sub(r'[^A-Za-z0-9_.-]+', '_', f'{detector}_{dataset}')}.svg"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="svg", bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
