"""Grid expansion: seed × detector × dataset/category × attack point → frozen ``Cell``s.

A cell's id is readable (labels, category, attack, ε, seed) plus 8 hex digits of the hash
of its full configuration and labels, so two attack entries that differ only in, say,
steps or a label get distinct ids, and a changed configuration never reuses an old row.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .attacks import ATTACKS, AttackSpec
from .attacks.threat import Norm
from .datasets import DATASETS, Dataset
from .datasets.base import digest
from .rows import safe_part
from .suite import Entry, Suite, expand_attack, threshold_quantile
from .validity import validity_points

log = logging.getLogger(__name__)
NO_CELLS = ("the suite resolves to 0 cells (e.g. only localization attacks on data without masks or on detectors "
            "without an anomaly map, or only gradient attacks on score-only detectors, or certificates of detectors that are not smoothed)")


@dataclass(frozen=True)
class Cell:
    suite: str
    seed: int
    detector: Entry
    dataset: Entry
    category: str
    attack: Entry  # one point: scalar kwargs, defaults filled in
    batch_size: int
    map_size: int | None  # None: the detector's input size
    source: Entry | None = None  # the detector a ``transfer`` attack crafts on
    threshold: str = "oracle"  # the F1 / G-mean threshold rule (suite key ``threshold``)
    holdout: float = 0.0  # fraction of normal train images set aside before fitting (normal-quantile only)
    examples: int = 0  # adversarial examples kept per class (PNGs for the site; no metric depends on them)

    @property
    def eps(self) -> float:
        return float(self.attack.kwargs.get("eps", 0.0))

    @property
    def objective(self) -> str:
        return self.attack.kwargs.get("objective", "detection")

    @property
    def spec(self) -> AttackSpec:
        return ATTACKS.get(self.attack.name)

    @property
    def knowledge(self) -> str:
        return self.spec.knowledge(self.objective)

    @property
    def quantile(self) -> float | None:
        """Q of the ``normal-quantile:Q`` threshold rule; None for ``oracle`` (checked when the suite loaded)."""
        return threshold_quantile(self.threshold)

    def fit_config(self) -> dict[str, Any]:
        config = {"detector": self.detector.config(), "dataset": self.dataset.config(), "category": self.category, "seed": self.seed}
        return config | ({"holdout": self.holdout} if self.holdout else {})  # held-out normals change what is fitted

    def config(self) -> dict[str, Any]:
        # no batch_size: no number depends on it (batch invariance), so changing it recomputes nothing
        config = {**self.fit_config(), "attack": self.attack.config(), "map_size": self.map_size}
        config |= {"threshold": self.threshold} if self.threshold != "oracle" else {}
        return config | ({"source": self.source.config()} if self.source else {})

    @cached_property
    def cell_id(self) -> str:  # computed once per cell: the plan, the runner and every row ask for it
        parts = [self.detector.label, self.dataset.label, self.category, self.attack.label]
        if "norm" in self.attack.kwargs:
            parts.append(self.attack.kwargs["norm"])
        if "eps" in self.attack.kwargs:
            parts.append(eps_slug(self.eps, self.attack.kwargs.get("norm", "linf")))
        # the hash covers the labels too: two cells that differ only in a label (or in characters
        # the readable part cannot show, e.g. "dét" and "dèt") never share an id
        labels = [self.detector.label, self.dataset.label, self.attack.label, self.source.label if self.source else None]
        parts += [f"s{self.seed}", digest({**self.config(), "labels": labels})[:8]]
        return ".".join(safe_part(p) for p in parts)


def eps_slug(eps: float, norm: str = "linf") -> str:
    """``eps8-255`` for L∞ multiples of 1/255, else ``eps0.5``: readable ids, not display strings."""
    k = eps * 255
    return f"eps{round(k)}-255" if norm == Norm.LINF and abs(k - round(k)) < 1e-6 else f"eps{eps:.4g}"


def resolve_attack(entry: Entry, point: dict[str, Any]) -> Entry:
    """Fill in the attack's defaults so every knob is recorded in the cell."""
    return Entry(name=entry.name, label=entry.label, kwargs=ATTACKS.get(entry.name).resolve(point), key=entry.key)


def build_dataset(entry: Entry) -> Dataset:
    return DATASETS.get(entry.name)(**entry.kwargs)


def expand(suite: Suite, datasets: dict[str, Dataset] | None = None) -> list[Cell]:
    """Every cell of ``suite`` in order; ``datasets`` (entry config digest → built dataset)
    saves building them again."""
    datasets = datasets or {digest(entry.config()): build_dataset(entry) for entry in suite.datasets}
    cells = []
    attacks = [resolve_attack(a, p) for a in suite.attacks for p in expand_attack(a)]
    if suite.validity:  # the cells the validity checks need, unless the suite has them already
        known = [a.config() for a in attacks]
        extra = [resolve_attack(Entry(name, label), kw) for name, label, kw in validity_points([(a.name, a.label, a.kwargs) for a in attacks])]
        attacks += [a for a in extra if a.config() not in known]
    by_label = {d.label: d for d in suite.detectors}
    skipped: dict[str, set[str]] = {}  # detector without a map → the localization attacks it cannot serve
    unmasked: dict[str, set[str]] = {}  # dataset without masks → the same
    gradless: dict[str, set[str]] = {}  # score-only detector → the attacks that would differentiate it
    uncertified: dict[str, set[str]] = {}  # detector that is not smoothed → the certificate cells it cannot have
    for seed in suite.seeds:
        for det in suite.detectors:
            for ds_entry in suite.datasets:
                if ds_entry.detectors and det.label not in ds_entry.detectors:
                    continue  # the dataset entry restricts its detectors (e.g. one-class sets for ZARND)
                dataset = datasets[digest(ds_entry.config())]
                for category in dataset.categories:
                    for attack in attacks:
                        if det.attacks and attack.label not in det.attacks:
                            continue  # the detector entry names the attacks it runs
                        if attack.kwargs.get("objective") == "localization" and not dataset.has_masks:
                            unmasked.setdefault(ds_entry.label, set()).add(attack.label)  # no mask, no objective
                            continue
                        if attack.kwargs.get("objective") == "localization" and not localizes(det):
                            skipped.setdefault(det.label, set()).add(attack.label)  # its objective would be 0: no row
                            continue
                        source = by_label[attack.kwargs["source"]] if ATTACKS.get(attack.name).kind == "transfer" else None
                        if source is det:  # crafting on the target itself is the white-box attack
                            continue
                        if ATTACKS.get(attack.name).kind == "certificate" and not declared(det, "certifiable"):
                            uncertified.setdefault(det.label, set()).add(attack.label)  # nothing to certify
                            continue
                        if not gradient_ok(det, attack, source):
                            gradless.setdefault((source or det).label, set()).add(attack.label)
                            continue
                        cells.append(Cell(suite.name, seed, det, ds_entry, str(category), attack, suite.batch_size, suite.map_size, source,
                                          threshold=suite.threshold, holdout=suite.holdout, examples=suite.examples))
    for label, names in sorted(unmasked.items()):
        log.warning("%s: dataset %r has no pixel masks, so no localization cell is run on it (skipped: %s)",
                    suite.file or suite.name, label, ", ".join(sorted(names)))
    for label, names in sorted(skipped.items()):
        log.warning("%s: detector %r has no anomaly map, so no localization cell is run for it (skipped: %s)",
                    suite.file or suite.name, label, ", ".join(sorted(names)))
    for label, names in sorted(gradless.items()):
        log.warning("%s: detector %r is score-only (no input gradient), so no attack that differentiates it is run "
                    "(skipped: %s)", suite.file or suite.name, label, ", ".join(sorted(names)))
    for label, names in sorted(uncertified.items()):
        log.warning("%s: detector %r is not smoothed (wrap it: {name: smoothed, base: {...}}), so it gets no certificate "
                    "(skipped: %s)", suite.file or suite.name, label, ", ".join(sorted(names)))
    return cells


def gradient_ok(det: Entry, attack: Entry, source: Entry | None) -> bool:
    """Whether every gradient the attack asks for exists: the target's for a gradient or
    surrogate attack, the source's for a transfer crafted by a gradient attack."""
    if source is not None:
        return differentiable(source) or not ATTACKS.get(attack.kwargs["attack"]).needs_gradient
    return differentiable(det) or not ATTACKS.get(attack.name).needs_gradient


def differentiable(entry: Entry) -> bool:
    """Whether the entry's detector has an input gradient (``Detector.differentiable``)."""
    return declared(entry, "differentiable")


def declared(entry: Entry, trait: str) -> bool:
    """A trait the entry's detector declares (``Detector.declared``), read before it is built; a
    registered factory (the Python API's prebuilt detector) has the class attribute or the default."""
    from robustad_bench.adapters import DETECTORS, Detector

    target = DETECTORS.get(entry.name)
    if hasattr(target, "declared"):
        return bool(target.declared(trait, **entry.kwargs))
    return bool(getattr(target, trait, getattr(Detector, trait)))


def localizes(entry: Entry) -> bool:
    """Whether the entry's detector returns a real anomaly map (``Detector.localization``)."""
    return declared(entry, "localization")


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """Cells whose id matches the glob ``only`` (all when None)."""
    if not only:
        return cells
    pattern = only if any(ch in only for ch in "*?[") else f"*{only}*"
    return [c for c in cells if fnmatch.fnmatch(c.cell_id, pattern)]
