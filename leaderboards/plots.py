"""Reliability diagrams (clean vs adversarial) per detector and dataset, as SVG files.

Draws the harness's reliability records (``harness/summaries.py``, in ``summary.json``): the
clean curve pools the clean Platt posteriors of every category; the adversarial curve pools
those of the strongest attack setting (lowest mean image AUROC) over the same categories.
Each point is labelled with its bin's number of images; the legend gives the table's ECE
(the mean of the per-category ECEs, 15 equal-width bins) and, beside it, the ECE of the
pooled points.
"""

from __future__ import annotations

import re
from pathlib import Path


def write_reliability_diagrams(out_dir: Path, reliability: list[dict], attack_text) -> list[Path]:
    """One SVG per record (detector × dataset) under ``out_dir/plots``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for record in reliability:
        detector, dataset = record["detector"], record["dataset"]
        strongest = attack_text(record["strongest_setting"])
        fig, ax = plt.subplots(figsize=(4, 4.6))
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
        for curve, name, colour in ((record["clean"], "clean", "#1f77b4"), (record["strongest"], strongest, "#d62728")):
            if curve is None:
                continue
            table = "n/a" if curve["table_ece"] is None else f"{100 * curve['table_ece']:.1f}"
            ax.plot(curve["x"], curve["y"], marker="o", color=colour,
                    label=f"{name}: ECE {table} (table: mean over categories; pooled {100 * curve['pooled_ece']:.1f})")
            for xi, yi, n in zip(curve["x"], curve["y"], curve["images"]):  # images per bin: a point of 2 images says little
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
