"""A composite attack's part read back from a cell of the same group instead of run again.

AutoAttack-AD runs APGD, FAB, Square and PGD and keeps the worst case per image; a suite that
also has APGD and Square cells at the same ε, steps and objective has already made those
parts' adversarial images for the same detector fit, images and seed. An image's adversarial
image depends only on that image, the attack call and the cell's seed (DESIGN: no number
depends on how it was computed), so the part's images are the ones the cell made: the
composite takes them and runs only what is left.

A call is identified by its *key*: the attack, its threat model, its options (defaults
filled in) and its objective (task, entropy weight, BPDA). Everything else a call reads —
the clean thresholds, the defender's calibrator, the seed, the images — is the fit group's,
and a ``Recall`` lives in one group. A call that reads more than that (a ``prepare``d state,
a transfer source, a previous stage's start point) has no key and is never shared.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from robustad_bench.harness.datasets.base import digest

from .base import GRADIENT_KINDS, AttackSpec, Context
from .threat import ThreatModel

SHARED_KINDS = ("gradient", "score-only")  # kinds whose result is a function of (objective, x, threat, context)


def call_key(spec: AttackSpec, threat: ThreatModel, options: Mapping[str, Any], objective: Mapping[str, Any]) -> str | None:
    """The identity of one attack call within a fit group, or None when it cannot be shared."""
    if spec.kind not in SHARED_KINDS or spec.prepare is not None:
        return None
    resolved = {key: default for key, (_, default) in spec.options().items()} | dict(options)
    if spec.kind not in GRADIENT_KINDS:  # BPDA changes gradients only: an attack that takes none is the same call
        objective = {**objective, "bpda": False}
    return digest({"attack": spec.name, "threat": dataclasses.asdict(threat), "options": resolved,
                   "objective": dict(objective)})


def cell_call(spec: AttackSpec, point: Mapping[str, Any]) -> str | None:
    """The key of the call a cell with attack ``spec`` at resolved ``point`` makes."""
    return call_key(spec, spec.threat_model(point), spec.own_options(point), spec.objective_config(point))


def parts_of(spec: AttackSpec, point: Mapping[str, Any]) -> list[tuple[AttackSpec, ThreatModel, dict[str, Any], str | None]]:
    """(spec, threat model, options, key) of each part a composite attack (one declaring
    ``parts``) runs at ``point``; none for another attack."""
    if spec.parts is None:
        return []
    objective = spec.objective_config(point)
    return [(part, threat, options, call_key(part, threat, options, objective))
            for part, threat, options in spec.parts(spec.threat_model(point), **spec.own_options(point))]


def part_calls(spec: AttackSpec, point: Mapping[str, Any]) -> list[str]:
    """The keys of the parts a composite attack runs at ``point`` (those that can be shared)."""
    return [key for *_, key in parts_of(spec, point) if key is not None]


def run_order(calls: list[tuple[AttackSpec, Mapping[str, Any]]]) -> list[int]:
    """The order a fit group's cells run in (positions into ``calls``): the suite's, except that
    a composite attack with parts other cells of the group make runs right after the last of
    them, so that its parts are there to take wherever the suite lists it and are let go as
    soon as it is done (a part's images are held from its cell to its last taker's)."""
    makers: dict[str, list[int]] = {}
    for i, (spec, point) in enumerate(calls):
        makers.setdefault(cell_call(spec, point), []).append(i)
    needs = [{j for key in part_calls(spec, point) for j in makers.get(key, ()) if j != i}
             for i, (spec, point) in enumerate(calls)]
    order, placed = [], set()
    for i in range(len(calls)):
        if needs[i]:
            continue  # placed once its makers are
        order.append(i)
        placed.add(i)
        while (ready := next((j for j in range(len(calls)) if j not in placed and needs[j] and needs[j] <= placed), None)) is not None:
            order.append(ready)  # a composite whose makers have all run (the first in the suite's order)
            placed.add(ready)
    return order + [i for i in range(len(calls)) if i not in placed]  # a cycle: none between attacks of one group


def taken_parts(calls: list[tuple[AttackSpec, Mapping[str, Any]]]) -> list[list[str]]:
    """Per cell of a fit group, in run order ((spec, resolved point) each): the keys of its
    parts that an earlier cell of the group makes as its own call."""
    made, taken = set(), []
    for spec, point in calls:
        taken.append([key for key in part_calls(spec, point) if key in made])
        made.add(cell_call(spec, point))
    return taken


class Recall:
    """The adversarial images of the calls a later cell of the group will take as parts
    (``wanted``: key → how many cells still will), per image id, on the CPU."""

    def __init__(self, wanted: Counter[str] | None = None):
        self.wanted: Counter[str] = Counter(wanted or {})
        self.images: dict[str, dict[str | int, Tensor]] = {}
        self.recalled: Counter[str] = Counter()  # part name → images taken from another cell

    def offer(self, key: str | None, images: tuple[str | int, ...], x_adv: Tensor) -> None:
        """Keep a cell's adversarial batch when a later cell wants its call."""
        if key is not None and self.wanted[key] > 0:
            kept = self.images.setdefault(key, {})
            for image, adv in zip(images, x_adv.detach().cpu()):
                kept[image] = adv.clone()

    def get(self, key: str | None, images: tuple[str | int, ...], device: torch.device) -> Tensor | None:
        """The batch's adversarial images of call ``key`` when every one of them is kept."""
        kept = self.images.get(key) if key is not None else None
        if not kept or any(image not in kept for image in images):
            return None
        return torch.stack([kept[image] for image in images]).to(device)

    def done(self, keys: list[str]) -> None:
        """A cell that wanted ``keys`` is finished: release what no later cell wants."""
        for key in keys:
            self.wanted[key] -= 1
            if self.wanted[key] <= 0:
                self.images.pop(key, None)


def recalled_part(context: Context, spec: AttackSpec, threat: ThreatModel, options: Mapping[str, Any],
                  objective_config: Mapping[str, Any], x: Tensor) -> Tensor | None:
    """A composite attack's part, as a cell of the group made it for these images, or None
    (no recall, a chained start point, a call that cannot be shared, images not kept)."""
    recall = context.recall
    if recall is None or context.start is not None:
        return None
    found = recall.get(call_key(spec, threat, options, objective_config), context.images, x.device)
    if found is not None:
        recall.recalled[spec.name] += len(context.images)
    return found
