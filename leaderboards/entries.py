"""Per-entry pages: per-category tables, provenance, flags, AUROC-vs-ε curves, adversarial
examples, and the entry's JSON summary.

A page per detector label (``entries/<slug>.html`` and ``.json``). The per-category tables
are the main view's tables with categories as rows; the curves are mean over categories;
the examples are the PNGs the run saved (``cells/<id>/examples/``) for the entry's
strongest attack on each category (lowest image AUROC), copied next to the page.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

from robustad_bench.harness.attacks.threat import Norm
from robustad_bench.harness.results import EXAMPLE_KINDS, cell_scores
from robustad_bench.harness.rows import is_clean, safe_part
from robustad_bench.harness.summaries import BY_CATEGORY, Aggregates

from .board import budget_text, main_tables, threat_of, threat_text


def slug(text: str) -> str:
    return safe_part(text).strip("._") or "entry"


def category_tables(rows: list[dict], ranked_by_category: list[dict]):
    """The main view's tables with one row per category (the 'detector' of each row is its category)."""
    tables = main_tables(rows, ranked_by_category, by=BY_CATEGORY)
    for t in tables:
        t.rows.sort(key=lambda r: r["detector"])
    return tables


def curves(ranked: list[dict], dataset: str, path: Path) -> bool:
    """AUROC vs ε, one line per attack (label, task), image and pixel AUROC, one panel per norm:
    the harness's ranked values of one entry on ``dataset`` (mean over categories, then seeds).
    Where the entry has certificates, the panel also draws the bracket: the certified AUROC
    (dashed) below the robust worst case over the attacks, at each radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = {r["metric"]: r["mean"] for r in ranked if r["column"] == "clean" and r["mean"] is not None}
    attacked = [r for r in ranked if r["column"] == "attack" and r["mean"] is not None]
    certified = [r for r in ranked if r["column"] == "certified" and r["mean"] is not None]
    bracket = certified + [r for r in ranked if r["column"] == "robust" and r["mean"] is not None
                           and any((c["norm"], c["metric"]) == (r["norm"], r["metric"]) for c in certified)]
    norms = sorted({r["norm"] for r in attacked})
    metrics = [m for m in ("image_auroc", "pixel_auroc") if m in base]
    if not metrics or not norms:
        return False
    fig, axes = plt.subplots(len(metrics), len(norms), figsize=(4.2 * len(norms), 3.4 * len(metrics)), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, norm in enumerate(norms):
            ax = axes[i][j]
            lines = defaultdict(dict)
            for r in attacked:
                if r["norm"] == norm and r["metric"] == metric:
                    lines[f"{r['label']} ({r['task']})"][float(r["eps"])] = r["mean"]
            for r in bracket:
                if r["norm"] == norm and r["metric"] == metric:
                    lines[f"[{r['column']}]"][float(r["eps"])] = r["mean"]
            scale = 255 if norm == Norm.LINF else 1  # L∞ budgets read as k/255
            for name, points in sorted(lines.items()):
                eps = sorted(points)
                ax.plot([0.0, *(scale * e for e in eps)], [100 * base[metric], *(100 * points[e] for e in eps)], marker="o", label=name,
                        **({"ls": "--", "color": "k"} if name == "[certified]" else {"color": "k"} if name == "[robust]" else {}))
            ax.set(xlabel="ε × 255 (L∞)" if norm == Norm.LINF else "ε (L2)", ylabel=metric.replace("_", " "), ylim=(0, 100),
                   title=f"{dataset}: {metric.replace('_', ' ')}, {'L∞' if norm == 'linf' else 'L2'}")
            ax.axhline(50, color="#bbb", lw=0.8, ls=":")
            if lines:
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight")
    plt.close(fig)
    return True


def examples(out_dir: Path, rows: list[dict], site_folder: Path, base: Path) -> list[dict]:
    """Per category: the strongest attack's example PNGs, copied under ``site_folder``
    (paths relative to ``base``, the page's folder)."""
    found = []
    clean_of = {r["category"]: r for r in rows if is_clean(r)}
    attacked = [r for r in rows if threat_of(r) is not None and (r.get("metrics") or {}).get("image_auroc") is not None
                and (out_dir / "cells" / r["cell_id"] / "examples").is_dir()]
    for category in sorted({r["category"] for r in attacked}):
        strongest = min((r for r in attacked if r["category"] == category), key=lambda r: r["metrics"]["image_auroc"])
        source = out_dir / "cells" / strongest["cell_id"] / "examples"
        clean = clean_of.get(category)
        arrays = cell_scores(out_dir, clean) if clean else None
        target = site_folder / slug(strongest["cell_id"])
        target.mkdir(parents=True, exist_ok=True)
        images = []
        for index in sorted({p.name.split("_")[0] for p in source.glob("*.png")}):
            for kind in EXAMPLE_KINDS:
                if (source / f"{index}_{kind}.png").is_file():
                    shutil.copyfile(source / f"{index}_{kind}.png", target / f"{index}_{kind}.png")
            label = int(arrays["labels"][int(index)]) if arrays is not None else None
            images.append({"index": index, "label": {0: "normal", 1: "anomalous"}.get(label, "?"),
                           "files": {k: str((target / f"{index}_{k}.png").relative_to(base)) for k in EXAMPLE_KINDS}})
        found.append({"category": category, "attack": f"{strongest.get('attack_label') or strongest['attack']} "
                      f"{threat_text(threat_of(strongest))} ({strongest.get('task')})", "images": images})
    return found


def provenance(rows: list[dict]) -> dict:
    first = rows[0]
    return {
        "detector config": json.dumps(first.get("detector_config") or {}, sort_keys=True),
        "weights": first.get("weights"), "training budget": budget_text(first.get("detector_config")) or "—",
        "versions": ", ".join(f"{k} {v}" for k, v in sorted((first.get("versions") or {}).items())),
        "seeds": ", ".join(str(s) for s in sorted({r.get("seed") for r in rows})),
        "device": ", ".join(sorted({str(r.get("device")) for r in rows if r.get("device")})) or "not recorded",
        "seconds (attacks + fits)": f"{sum(r.get('seconds') or 0 for r in rows):.1f} + "
                                    f"{sum({(r['dataset'], r['category'], r.get('seed')): r.get('fit_seconds') or 0 for r in rows}.values()):.1f}",
        "forward / gradient passes": f"{sum((r.get('passes') or {}).get('forward', 0) for r in rows):,} / "
                                     f"{sum((r.get('passes') or {}).get('gradient', 0) for r in rows):,}",
        "cells (config hashes)": f"{len(rows)} ({len({r.get('config_hash') for r in rows})} distinct)",
    }


def entry_pages(out_dir: Path, site: Path, rows: list[dict], aggregates: Aggregates, env) -> dict[str, str]:
    """Write every entry's page and JSON; returns detector label → page path (relative to the site)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    pages = {}
    for detector in sorted({r["detector"] for r in ok}):
        mine = [r for r in ok if r["detector"] == detector]
        name = slug(detector)
        folder = site / "entries"
        sections, summary = [], {}
        for dataset in sorted({r["dataset"] for r in mine}):
            here = [r for r in mine if r["dataset"] == dataset]
            tables = category_tables(here, aggregates.ranked_by_category)
            curve = f"{name}/{slug(dataset)}-curves.svg"
            has_curve = curves([r for r in aggregates.ranked if (r["detector"], r["dataset"]) == (detector, dataset)], dataset,
                               folder / curve)
            sections.append({"dataset": dataset, "tables": tables, "curve": curve if has_curve else None,
                             "examples": examples(out_dir, here, folder / name / "examples" / slug(dataset), folder),
                             "flags": sorted({f for r in here for f in r.get("flags") or []})})
            summary[dataset] = {f"{t.task} {t.title}": {r["detector"]: {c.heading: r["values"][c.key].mean for c in t.columns}
                                                          for r in t.rows} for t in tables}
        page = env.get_template("entry.html.j2").render(detector=detector, provenance=provenance(mine), sections=sections,
                                                        threat_text=threat_text, json_name=f"{name}.json")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.html").write_text(page)
        (folder / f"{name}.json").write_text(json.dumps({
            "entry": detector, "weights": mine[0].get("weights"), "budget": budget_text(mine[0].get("detector_config")),
            "detector_config": mine[0].get("detector_config"), "status": "measured here", "per_category": summary,
            "config_hashes": sorted({r.get("config_hash") for r in mine if r.get("config_hash")}),
            "robust": [r for r in aggregates.robust if r["detector"] == detector],  # with the map each image took
        }, indent=1, default=str) + "\n")
        pages[detector] = f"entries/{name}.html"
    return pages
