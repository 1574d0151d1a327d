"""The attack contract (DESIGN §5): values in, adversarial images out.

Every attack is one function ``run(objective, x, threat, context, **options) -> x_adv``:

- ``objective`` (``Objective``): the per-image loss to maximise, built by the harness from
  the detector, the batch's labels or masks, the task and the defender's calibrator;
- ``x`` (B, 3, H, W) clean images in [0, 1];
- ``threat`` (``ThreatModel``): norm, ε, steps or queries, step size α, random start, restarts;
- ``context`` (``Context``): the clean image and pixel thresholds, a transfer source, the
  defender's calibrator, what the attack's ``prepare`` fitted once per cell, and per-image
  random streams;
- ``options``: the attack's own keyword-only arguments (YAML keys, one to one).

Its metadata is declared once, at registration (``register_attack``): its kind, the tasks
it supports, whether it is iterative, the threat-model fields it reads (with their
defaults) and, optionally, a ``prepare`` step run once per cell, a ``check`` of its own
options and, for a composite, its ``parts`` (so that a part another cell of the group makes is
taken from it, not run again: ``recall.py``). The suite check, the grid, the validity checks
and the leaderboard read that metadata; adding an attack is one new module and one import line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustad_bench.core.errors import UserError
from robustad_bench.core.registry import Registry
from robustad_bench.core.schema import NonNegative, parameters

from .objective import TASKS, Objective
from .rng import ImageRandom
from .threat import THREAT_FIELDS, ThreatModel

Kind = Literal["none", "gradient", "score-only", "transfer", "surrogate", "noise", "certificate"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
NEEDS_TARGET_GRADIENT = ("gradient", "surrogate")  # kinds that never run on a score-only detector
GRADIENT_KINDS = ("gradient", "transfer", "surrogate")  # attacks that differentiate an objective: ``bpda`` applies
KNOWLEDGE = {"detection": "label", "localization": "mask"}  # what a white-box attacker of a task knows
THREAT_HINTS = typing.get_type_hints(ThreatModel, include_extras=True)
VALUES = ("objective", "x", "threat", "context")  # the positional values every attack receives


@dataclass(frozen=True)
class Context:
    """What the harness knows about the cell, handed to the attack for one batch."""

    threshold: float  # image decision threshold t from the clean run (F1-max, else median score)
    pixel_threshold: float | None = None  # the same for map values (F1-max over clean pixels)
    seed: int = 0
    images: tuple[str | int, ...] = ()  # the batch's image ids (names in the dataset): random streams
    source: nn.Module | None = None  # a transfer attack's fitted source detector
    calibrator: Callable[[Tensor], Tensor] | None = None  # the defender's score → P(anomalous)
    state: Mapping[str, Tensor] = field(default_factory=dict)  # what ``prepare`` fitted for this cell
    start: Tensor | None = None  # where an iterative attack starts (a composite attack's previous stage)
    recall: Any = None  # a ``Recall`` (recall.py): parts another cell of the fit group already ran

    def random(self, device: torch.device | str) -> ImageRandom:
        """Fresh per-image random streams, seeded by (cell seed, image id)."""
        return ImageRandom(self.seed, self.images, device)

    def subset(self, keep) -> Context:
        """The context of the images at positions ``keep`` only."""
        start = None if self.start is None else self.start[keep]
        return dataclasses.replace(self, images=tuple(self.images[int(k)] for k in keep), start=start)


@dataclass(frozen=True)
class CellData:
    """The whole cell, for an attack's ``prepare`` (e.g. a surrogate head fitted once per cell)."""

    train: Tensor  # (N, 3, H, W) normal training images
    test: Tensor  # (M, 3, H, W) clean test images
    labels: Tensor  # (M,) 1 = anomalous
    batch_size: int
    device: torch.device


@dataclass(frozen=True)
class AttackSpec:
    name: str
    run: Callable[..., Tensor]
    kind: str
    tasks: tuple[str, ...]
    iterative: bool  # more steps or queries should make it stronger (validity check b)
    threat: Mapping[str, Any]  # threat-model fields it reads → default
    adaptive: bool = False  # climbs Objective.loss, so it can take the entropy-aware objective
    prepare: Callable[..., dict[str, Tensor]] | None = None
    check: Callable[..., list[tuple[str, str]]] | None = None  # check(**point) → (key, problem) pairs
    title: str = ""  # how the leaderboard names it (default: the registered name)
    note: str = ""  # what the leaderboard says about it (e.g. how it departs from the original)
    schedule: Callable[..., dict[str, Any]] | None = None  # schedule(threat, **options) → what it runs beyond the threat fields
    tiny: Mapping[str, Any] = field(default_factory=dict)  # keys for a seconds-on-CPU run: the registry-driven tests use them
    parts: Callable[..., list[tuple[AttackSpec, ThreatModel, dict[str, Any]]]] | None = None  # a composite's parts(threat, **options)

    def what_ran(self, threat: ThreatModel, options: Mapping[str, Any]) -> dict[str, Any]:
        """What a row records of the attack's run: the threat fields it reads (with α where it
        takes a step size), then its own schedule (APGD's adaptive η, A³'s cosine steps, a
        composite attack's stages), which overrides them where it runs otherwise."""
        record = {key: getattr(threat, key) for key in ("norm", "eps", *self.threat) if key in THREAT_FIELDS}
        if "step_size" in self.threat:
            record["alpha"] = threat.alpha
        if self.schedule is not None:
            record |= self.schedule(threat, **options)
        return record

    @property
    def needs_gradient(self) -> bool:
        """Whether it differentiates the attacked detector itself (a transfer attack's crafting
        attack may need the source's gradient, never the target's)."""
        return self.kind in NEEDS_TARGET_GRADIENT

    @property
    def perturbs(self) -> bool:
        """Whether it makes adversarial images (the clean cell and a certificate make none)."""
        return self.kind not in ("none", "certificate")

    @property
    def uses_objective(self) -> bool:
        return self.kind not in ("none", "noise", "certificate")

    def options(self) -> dict[str, tuple[Any, Any]]:
        """The attack's own keyword arguments: name → (annotation, default)."""
        return dict(own_parameters(self.run))

    def parameters(self) -> dict[str, tuple[Any, Any]]:
        """Every YAML key of this attack: name → (annotation, default)."""
        params = {key: (THREAT_HINTS[key], default) for key, default in self.threat.items()}
        if self.uses_objective:
            params["objective"] = (Literal[self.tasks], self.tasks[0])
            params["knowledge"] = (str | None, None)
        if self.adaptive:
            params["entropy_weight"] = (NonNegative, 0.0)
        if self.kind in GRADIENT_KINDS:
            params["bpda"] = (bool, False)
        return params | self.options()

    def knowledge(self, task: str) -> str:
        """What the attacker knows, from its kind and task (shown on the leaderboard)."""
        fixed = {"none": "none", "noise": "none", "score-only": "blackbox", "surrogate": "surrogate", "certificate": "certified"}
        return fixed.get(self.kind, KNOWLEDGE[task])

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter of one attack point, defaults filled in (knowledge from the kind)."""
        params = self.parameters()
        if unknown := sorted(set(given) - set(params)):
            raise UserError(f"unknown key(s) {unknown} for attack {self.name!r}; allowed: {', '.join(params)}", key=unknown[0])
        point = {key: default for key, (_, default) in params.items()} | dict(given)
        if missing := [key for key, value in point.items() if value is inspect.Parameter.empty]:
            raise UserError(f"attack {self.name!r} needs the key(s) {missing}", key=missing[0])
        if self.uses_objective and point["knowledge"] is None:
            point["knowledge"] = self.knowledge(point["objective"])
        return point

    def problems(self, point: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(key, problem) pairs of one resolved point: threat model, knowledge, own check."""
        found = self.threat_model(point).problems()
        if self.uses_objective and point.get("knowledge") is not None:
            needed = self.knowledge(point["objective"])
            if point["knowledge"] != needed:
                found.append(("knowledge", f"knowledge {point['knowledge']!r} does not fit a {self.kind} "
                                           f"{point['objective']} attack; allowed: {needed!r}"))
        if self.check is not None:
            found += self.check(**point)
        return found

    def threat_model(self, point: Mapping[str, Any]) -> ThreatModel:
        return ThreatModel(**{key: point.get(key, default) for key, default in self.threat.items()})

    def own_options(self, point: Mapping[str, Any]) -> dict[str, Any]:
        return {key: point[key] for key in self.options() if key in point}

    def objective_config(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """The objective a point asks for, as values (``Objective.config``)."""
        return {"task": point.get("objective", "detection"), "entropy_weight": float(point.get("entropy_weight", 0.0)),
                "bpda": bool(point.get("bpda", False))}

    def objective(self, detector: nn.Module, labels: Tensor, masks: Tensor | None, point: Mapping[str, Any],
                  calibrator: Callable | None = None) -> Objective:
        config = self.objective_config(point)
        return Objective(detector, labels, masks, config["task"], calibrator if config["entropy_weight"] > 0 else None,
                         config["entropy_weight"], config["bpda"])


@functools.cache
def own_parameters(run: Callable[..., Tensor]) -> tuple[tuple[str, tuple[Any, Any]], ...]:
    """``run``'s keyword arguments beyond the values every attack receives, read once
    (signature inspection costs a millisecond, asked for on every cell)."""
    return tuple(parameters(run, skip=VALUES).items())


def admit_attack(obj: object) -> AttackSpec | None:
    """A registered attack: its ``AttackSpec``, or the function ``register_attack`` registered."""
    if isinstance(obj, AttackSpec):
        return obj
    spec = getattr(obj, "attack_spec", None)
    return spec if isinstance(spec, AttackSpec) else None


ATTACKS: Registry[AttackSpec] = Registry("attack", "robustad_bench.attacks", admit=admit_attack,
                                         expected="an attack registered with register_attack")


def register_attack(name: str, *, kind: str, tasks: tuple[str, ...] = TASKS, iterative: bool = False,
                    threat: Mapping[str, Any] | None = None, adaptive: bool = False,
                    prepare: Callable | None = None, check: Callable | None = None,
                    title: str = "", note: str = "", schedule: Callable | None = None,
                    tiny: Mapping[str, Any] | None = None, parts: Callable | None = None) -> Callable:
    """Register ``run`` under ``name`` with its metadata; returns ``run`` unchanged."""
    assert kind in KINDS, f"attack {name!r}: kind must be one of {KINDS}, got {kind!r}"
    assert set(tasks) <= set(TASKS), f"attack {name!r}: tasks must be among {TASKS}, got {tasks}"
    assert set(threat or {}) <= set(THREAT_FIELDS), f"attack {name!r}: threat fields are {tuple(THREAT_FIELDS)}"

    def decorator(run: Callable[..., Tensor]) -> Callable[..., Tensor]:
        spec = AttackSpec(name, run, kind, tuple(tasks), iterative, dict(threat or {}), adaptive, prepare, check, title, note,
                          schedule, dict(tiny or {}), parts)
        ATTACKS.register(name)(spec)
        run.attack_spec = spec  # an import path naming the function resolves to its registration
        return run

    return decorator


def attacks_for(kinds: tuple[str, ...], task: str, *, threat_field: str | None = None) -> list[str]:
    """Registered attacks of one of ``kinds`` that support ``task`` (and read ``threat_field``):
    what a composite attack may run as a part, read from the declared metadata."""
    return [name for name in ATTACKS.names() if (spec := ATTACKS.get(name)).kind in kinds and task in spec.tasks
            and (threat_field is None or threat_field in spec.threat)]


def initial_point(x: Tensor, threat: ThreatModel, context: Context, rng: ImageRandom) -> Tensor:
    """Where an iterative attack starts: the context's ``start`` (CAA chains attacks this way),
    else the threat model's random start (or ``x`` without one)."""
    return context.start.detach() if context.start is not None else threat.start(x, rng)


def keep_best(best: Tensor, best_loss: Tensor | None, x_adv: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the candidate with the higher attacker loss (ties keep ``best``)."""
    if best_loss is None:
        return x_adv, loss
    better = loss > best_loss
    return torch.where(better.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, best), torch.where(better, loss, best_loss)


@dataclass(frozen=True)
class PreparedAttack:
    """One attack point made ready for a cell: its threat model, its own options, and the
    context with what ``prepare`` fitted once for the cell. The one assembly of the attack
    call (evaluation, ``run_attack`` and the pass counter all use it)."""

    spec: AttackSpec
    point: Mapping[str, Any]
    threat: ThreatModel
    options: Mapping[str, Any]
    context: Context

    def run(self, detector: nn.Module, x: Tensor, labels: Tensor, masks: Tensor | None, *,
            images: tuple[str | int, ...], calibrator: Callable | None = None) -> Tensor:
        """Attack one batch (``images``: its ids, the random streams) on ``detector``."""
        objective = self.spec.objective(detector, labels, masks, self.point, calibrator)
        return self.spec.run(objective, x, self.threat, dataclasses.replace(self.context, images=tuple(images)), **self.options)


def prepare_attack(spec: AttackSpec, point: Mapping[str, Any], detector: nn.Module, context: Context,
                   data: CellData) -> PreparedAttack:
    """The threat model and options of a resolved ``point``, and ``prepare`` run once on the
    whole cell (``data``) where the attack declares one."""
    threat, options = spec.threat_model(point), spec.own_options(point)
    if spec.prepare is not None:
        context = dataclasses.replace(context, state=spec.prepare(detector, data, threat, context, **options))
    return PreparedAttack(spec, point, threat, options, context)


def run_attack(name: str, detector: nn.Module, x: Tensor, labels: Tensor, masks: Tensor | None = None, *,
               seed: int = 0, threshold: float | None = None, pixel_threshold: float | None = None,
               images: tuple[str | int, ...] | None = None, source_detector: nn.Module | None = None,
               calibrator: Callable | None = None, train: Tensor | None = None, **kwargs: Any) -> Tensor:
    """Run one attack on one batch exactly as the harness does, for tests, benchmarks and
    one's own scripts. ``kwargs`` are the attack's YAML keys; ``images`` are the images' ids
    (their random streams; default: their positions); ``threshold`` and
    ``pixel_threshold`` default to the batch's median clean score and map value, ``train``
    (for ``prepare``) to ``x``."""
    spec = ATTACKS.get(name)
    point = spec.resolve(kwargs)
    if problems := spec.problems(point):
        raise UserError(problems[0][1], key=problems[0][0])
    if threshold is None or pixel_threshold is None:
        with torch.no_grad():
            clean = detector(x)
        threshold = float(clean.score.median()) if threshold is None else threshold
        pixel_threshold = float(clean.map.median()) if pixel_threshold is None else pixel_threshold
    images = tuple(range(len(x))) if images is None else tuple(images)
    context = Context(threshold=float(threshold), pixel_threshold=float(pixel_threshold), seed=seed, images=images,
                      source=source_detector, calibrator=calibrator)
    data = CellData(x if train is None else train, x, labels, batch_size=len(x), device=x.device)
    return prepare_attack(spec, point, detector, context, data).run(detector, x, labels, masks, images=images,
                                                                     calibrator=calibrator)
