"""Robust metrics at one threat model, each one an attacker can reach with one perturbation per image.

Image AUROC: for each test image the attacked score most harmful to it is kept — the highest
for a normal image, the lowest for an anomalous one — over the clean score (the identity is
in every threat model) and every attack at that (norm, ε), whatever its objective or
knowledge. Each image is perturbed on its own, so the per-image worst case is realizable:
AutoAttack's per-sample worst case read for AUROC.

Pixel AUROC and AUPRO pool the pixels of every image, so a per-pixel worst case would mix
pixels of different adversarial images — a map no single perturbation produces. Instead each
image contributes ONE candidate map, its clean map or one attack's (``select_maps``):
starting from the strongest single candidate, every image in turn takes the candidate that
lowers the pooled pixel AUROC most given the other images' current maps (its pixel pairs
with every other image's pixels, and its own), and the rounds repeat while the pooled value
falls. The published value of each metric is the lowest of that selection and of every
single candidate, so it never exceeds the strongest single attack; the record names the
candidate each image took.

Everything is computed from the saved per-image arrays (``cells/<id>/scores.npz``), here in
the harness: the renderer (run at the end of every run) writes the records to ``robust.jsonl``
and only lays them out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import METRICS
from .results import cell_scores
from .rows import is_clean

GROUP = ("detector", "weights", "dataset", "category", "seed")  # one fitted detector on one test set


def worst_case(labels: np.ndarray, clean: np.ndarray, attacked: list[np.ndarray]) -> np.ndarray:
    """Per image (or pixel): the max over clean and attacked values where the label is 0,
    the min where it is 1. ``labels`` broadcasts against each array."""
    stack = np.stack([clean, *attacked]).astype(np.float64)
    return np.where(np.asarray(labels) == 1, stack.min(0), stack.max(0))


def threat_of(row: dict) -> tuple[str, float] | None:
    """(norm, ε) of an attacked row; None for the clean row, ε = 0 and a certificate (a bound,
    not an image an attacker made: it never enters a worst case or an attack column)."""
    if is_clean(row) or not row.get("eps") or row.get("attack_kind") == "certificate":
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
        if threat is None and is_clean(row):
            groups[key]["clean"] = row
        elif threat is not None:
            groups[key]["threats"][threat].append(row)
    records = []
    for key, group in groups.items():
        if group["clean"] is None:
            continue  # no clean row: no worst case that includes the unperturbed image
        clean = cell_scores(out_dir, group["clean"])
        if clean is None:
            continue
        for threat, attacked_rows in sorted(group["threats"].items()):
            loaded = [a if a is not None and len(a["scores"]) == len(clean["scores"]) else None
                      for a in (cell_scores(out_dir, r) for r in attacked_rows)]
            kept = [(r, a) for r, a in zip(attacked_rows, loaded) if a is not None]
            if not kept:
                continue
            names = candidate_names([r for r, _ in kept])
            records.append({**dict(zip(GROUP, key)), "norm": threat[0], "eps": threat[1], "attacks": sorted(set(names)),
                            **worst_case_metrics(clean, [a for _, a in kept], names,
                                                 [group["clean"], *(r for r, _ in kept)])})
    return records


def candidate_names(rows: list[dict]) -> list[str]:
    """What the record calls each attacked row's map: its attack label, with its cell id where
    two rows of one threat model share a label (e.g. PGD at 5 and at 25 steps)."""
    labels = [r.get("attack_label") or r["attack"] for r in rows]
    return [label if labels.count(label) == 1 else f"{label} ({r['cell_id']})" for label, r in zip(labels, rows)]


def worst_case_metrics(clean: dict[str, np.ndarray], attacked: list[dict[str, np.ndarray]],
                       names: list[str] | None = None, rows: list[dict] | None = None) -> dict[str, Any]:
    """Robust image AUROC (per-image worst case), pixel AUROC and AUPRO (one candidate map per
    image), and for the pixel metrics the candidate each image took (``names``: the attacks',
    in ``attacked`` order; the clean map is ``"none"``). ``rows`` (the clean row, then the
    attacked ones) give each single candidate's own pixel metrics, computed from the same
    saved maps when the cell ran: they are read, not computed again."""
    labels = clean["labels"]
    scores = worst_case(labels, clean["scores"], [a["scores"] for a in attacked])
    out = {"robust_image_auroc": METRICS.get("image_auroc")(labels, scores), "robust_pixel_auroc": None, "robust_aupro": None}
    names = names or [str(i) for i in range(len(attacked))]
    rows = rows or [{}] * (len(attacked) + 1)
    with_maps = [(name, a["maps"], row) for name, a, row in zip(names, attacked, rows[1:]) if "maps" in a]
    if "maps" in clean and "masks" in clean and with_maps:
        masks = clean["masks"]
        candidates = [("none", clean["maps"], rows[0]), *with_maps]
        stack = np.stack([m for _, m, _ in candidates]).astype(np.float32)  # (K, N, h, w)
        known = [row.get("metrics") or {} for _, _, row in candidates]
        out |= realizable_pixel_metrics(labels, scores, stack, masks, [n for n, _, _ in candidates], known)
    return out


def realizable_pixel_metrics(labels: np.ndarray, scores: np.ndarray, stack: np.ndarray, masks: np.ndarray,
                             names: list[str], known: list[dict] | None = None) -> dict[str, Any]:
    """Pixel AUROC and AUPRO, each the lowest over the greedy selection and every single
    candidate (its value from ``known`` where its row has it), with the per-image choice that
    gives it."""
    options = {f"all {name}": np.full(stack.shape[1], k) for k, name in enumerate(names)}
    options["per-image selection"] = select_maps(stack, masks)
    single = {f"all {name}": values for name, values in zip(names, known or [{}] * len(names))}
    out = {}
    for metric, key in (("pixel_auroc", "robust_pixel_auroc"), ("aupro", "robust_aupro")):
        values = {how: single.get(how, {}).get(metric) for how in options}
        values |= {how: METRICS.get(metric)(labels, scores, maps=chosen_maps(stack, pick), masks=masks)
                   for how, pick in options.items() if values[how] is None}
        values = {how: v for how, v in values.items() if v is not None}
        if not values:
            out |= {key: None, f"{key}_choice": None}
            continue
        how = min(values, key=lambda h: (values[h], h != "per-image selection"))
        out |= {key: values[how], f"{key}_choice": {"rule": how, "images": [names[k] for k in options[how]]}}
    return out


def chosen_maps(stack: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """(N, h, w): image i's map from candidate ``pick[i]`` of ``stack`` (K, N, h, w)."""
    return stack[pick, np.arange(stack.shape[1])]


SELECTION_ROUNDS = 10


SELECTION_PIXELS = (2**17, 2**18)  # anomalous, normal pixels the selection looks at, at most (a fixed random sample)


def select_maps(stack: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image, the index of ONE candidate map of ``stack`` (K, N, h, w): coordinate descent
    on the pooled pixel AUROC (module docstring) from each single candidate in turn, keeping
    the lowest. On a paper-scale test set the choice is made on a fixed random sample of
    pixels (``SELECTION_PIXELS``); the published value is computed on every pixel of the
    chosen maps, and is still compared with every single attack."""
    truth = masks.reshape(masks.shape[0], -1) > 0
    if truth.all() or not truth.any():
        return np.zeros(stack.shape[1], int)
    flat = stack.reshape(stack.shape[0], stack.shape[1], -1)
    rates = [min(1.0, limit / count) for limit, count in zip(SELECTION_PIXELS, (truth.sum(), (~truth).sum()))]
    keep = np.random.default_rng(0).random(truth.shape) < np.where(truth, rates[0], rates[1])
    pixels = Pixels([[flat[k, i][keep[i]] for i in range(flat.shape[1])] for k in range(flat.shape[0])],
                    [truth[i][keep[i]] for i in range(flat.shape[1])])
    best, best_value = None, np.inf
    for start in range(stack.shape[0]):
        pick = descend(pixels, np.full(stack.shape[1], start))
        value = pixels.correct_pairs(pick)
        if value < best_value:
            best, best_value = pick, value
    return best


class Pixels:
    """Each candidate's pixels of each image (K lists of N arrays), split into anomalous and
    normal ones and sorted (sorted queries make ``searchsorted`` several times faster), with
    the image's own correctly ranked pairs."""

    def __init__(self, maps: list[list[np.ndarray]], truth: list[np.ndarray]):
        self.candidates, self.images = len(maps), len(truth)
        self.positive = [[np.sort(m[t]) for m, t in zip(row, truth)] for row in maps]
        self.negative = [[np.sort(m[~t]) for m, t in zip(row, truth)] for row in maps]
        self.within = np.array([[half_ranks(n, p).sum() for n, p in zip(negatives, positives)]
                                for negatives, positives in zip(self.negative, self.positive)])

    def pooled(self, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every anomalous and every normal pixel of the maps ``pick`` chooses, sorted."""
        return (np.sort(np.concatenate([self.positive[k][i] for i, k in enumerate(pick)])),
                np.sort(np.concatenate([self.negative[k][i] for i, k in enumerate(pick)])))

    def correct_pairs(self, pick: np.ndarray) -> float:
        positive, negative = self.pooled(pick)
        return float(half_ranks(negative, positive).sum())


def half_ranks(pooled: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per value, how many of ``pooled`` (sorted) lie below it, ties counting half."""
    return (np.searchsorted(pooled, values, "left") + np.searchsorted(pooled, values, "right")) / 2


def descend(pixels: Pixels, pick: np.ndarray) -> np.ndarray:
    """Image by image, the candidate with the fewest correctly ranked pairs of its own pixels —
    against every other image's current pixels, and among themselves — taken at once (the
    pooled pixels updated), in rounds until no image changes."""
    pick = pick.copy()
    positive_all, negative_all = pixels.pooled(pick)
    for _ in range(SELECTION_ROUNDS):
        changed = False
        for i in range(pixels.images):
            own_negative, own_positive = pixels.negative[pick[i]][i], pixels.positive[pick[i]][i]
            others_positive = len(positive_all) - len(own_positive)
            costs = []
            for k in range(pixels.candidates):
                positive, negative = pixels.positive[k][i], pixels.negative[k][i]
                # its anomalous pixels above the others' normal ones, its normal pixels below the others' anomalous ones
                against_others = (half_ranks(negative_all, positive) - half_ranks(own_negative, positive)).sum() + \
                    (others_positive - half_ranks(positive_all, negative) + half_ranks(own_positive, negative)).sum()
                costs.append(against_others + pixels.within[k, i])
            k = int(np.argmin(costs))
            if costs[k] < costs[pick[i]]:
                negative_all = replace_sorted(negative_all, own_negative, pixels.negative[k][i])
                positive_all = replace_sorted(positive_all, own_positive, pixels.positive[k][i])
                pick[i], changed = k, True
        if not changed:
            break
    return pick


def replace_sorted(pooled: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``pooled`` (sorted) without the values ``old`` (sorted, all in it) and with ``new`` (sorted)."""
    at = np.searchsorted(pooled, old, "left") + (np.arange(len(old)) - np.searchsorted(old, old, "left"))
    kept = np.delete(pooled, at)
    return np.insert(kept, np.searchsorted(kept, new), new)
