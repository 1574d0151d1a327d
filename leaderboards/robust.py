"""Robust AUROC: the AUROC of the per-image worst case over every attack at one threat model.

For each test image the attacked score most harmful to it is kept — the highest for a
normal image, the lowest for an anomalous one — over the clean score (the identity is in
every threat model) and every attack at that (norm, ε), whatever its objective or
knowledge. This is AutoAttack's per-sample worst case read for AUROC: it is at most the
minimum over attacks of their AUROCs, and lower when different attacks win on different
images. Pixel AUROC and AUPRO take the same worst case per pixel (the highest value on a
normal pixel, the lowest on an anomalous one) from the saved maps.

Everything is computed from the saved per-image arrays (``cells/<id>/scores.npz``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from robustad_bench.harness.metrics import METRICS
from robustad_bench.harness.results import load_scores

GROUP = ("detector", "weights", "dataset", "category", "seed")  # one fitted detector on one test set


def worst_case(labels: np.ndarray, clean: np.ndarray, attacked: list[np.ndarray]) -> np.ndarray:
    """Per image (or pixel): the max over clean and attacked values where the label is 0,
    the min where it is 1. ``labels`` broadcasts against each array."""
    stack = np.stack([clean, *attacked]).astype(np.float64)
    return np.where(np.asarray(labels) == 1, stack.min(0), stack.max(0))


def threat_of(row: dict) -> tuple[str, float] | None:
    """(norm, ε) of an attacked row; None for the clean row and ε = 0."""
    if row.get("attack") == "none" or not row.get("eps"):
        return None
    return str(row.get("norm") or "linf"), float(row["eps"])


def robust_metrics(out_dir: Path, rows: list[dict]) -> list[dict]:
    """One record per (group, threat model): robust image AUROC, pixel AUROC and AUPRO
    (None where not defined), with the attacks that entered the worst case."""
    groups: dict[tuple, dict] = defaultdict(lambda: {"clean": None, "threats": defaultdict(list)})
    for row in rows:
        if row.get("status") != "ok":
            continue
        key = tuple(row.get(k) for k in GROUP)
        threat = threat_of(row)
        if threat is None and row.get("attack") == "none":
            groups[key]["clean"] = row
        elif threat is not None:
            groups[key]["threats"][threat].append(row)
    records = []
    for key, group in groups.items():
        if group["clean"] is None:
            continue  # no clean row: no worst case that includes the unperturbed image
        clean = load_scores(out_dir / "cells" / group["clean"]["cell_id"] / "scores.npz")
        if clean is None:
            continue
        for threat, attacked_rows in sorted(group["threats"].items()):
            arrays = [a for a in (load_scores(out_dir / "cells" / r["cell_id"] / "scores.npz") for r in attacked_rows)
                      if a is not None and len(a["scores"]) == len(clean["scores"])]
            if not arrays:
                continue
            records.append({**dict(zip(GROUP, key)), "norm": threat[0], "eps": threat[1],
                            "attacks": sorted({r.get("attack_label") or r["attack"] for r in attacked_rows}),
                            **worst_case_metrics(clean, arrays)})
    return records


def worst_case_metrics(clean: dict[str, np.ndarray], attacked: list[dict[str, np.ndarray]]) -> dict[str, float | None]:
    labels = clean["labels"]
    scores = worst_case(labels, clean["scores"], [a["scores"] for a in attacked])
    out = {"robust_image_auroc": METRICS.get("image_auroc")(labels, scores), "robust_pixel_auroc": None, "robust_aupro": None}
    with_maps = [a["maps"] for a in attacked if "maps" in a]
    if "maps" in clean and "masks" in clean and with_maps:
        masks = clean["masks"]
        maps = worst_case(masks, clean["maps"], with_maps).astype(np.float32)
        out["robust_pixel_auroc"] = METRICS.get("pixel_auroc")(labels, scores, maps=maps, masks=masks)
        out["robust_aupro"] = METRICS.get("aupro")(labels, scores, maps=maps, masks=masks)
    return out
