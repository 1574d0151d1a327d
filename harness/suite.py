"""Suite YAML → a validated, frozen ``Suite``.

Each list entry is ``{name: X, label: Y?, **kwargs}`` where the kwargs are exactly the
registered constructor's (or attack function's) keyword arguments. Every problem is
collected and reported together, each naming the file, the key path and the allowed values.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustad_bench.core.errors import SuiteErrors, UserError
from robustad_bench.core.registry import Registry
from robustad_bench.core.schema import BadValue, coerce, parameters, parse_float

from .attacks import ATTACKS
from .datasets import DATASETS

TOP_LEVEL = {
    "name": "suite name; default output folder runs/<name>",
    "description": "free text",
    "seed": "an integer or a list of integers (the grid expands over seeds)",
    "batch_size": "images per attack/evaluation batch",
    "map_size": "evaluation resolution of pixel metrics and saved maps (default: each detector's input size; smaller = a CPU downscale)",
    "datasets": "list of {name, ...}",
    "detectors": "list of {name, ...}",
    "attacks": "list of {name, ...}",
    "validity": "true adds the cells the validity checks need (PGD at ε=1, noise, 5× steps)",
    "max_cells": "refuse grids larger than this (default 1,000,000)",
    "threshold": "the F1 / G-mean threshold: oracle (default; the clean test set's F1-max threshold, which uses the test labels) "
                 "or normal-quantile:Q (the Q-quantile of clean scores on held-out normal train images; no test labels)",
    "examples": "adversarial examples kept per class and attacked cell, as small PNGs for the site (default 2; 0: none)",
    "headline": "the threat model the leaderboard ranks by, {norm: linf|l2, eps: E} (default: the largest L∞ ε below 1 present)",
    "holdout": "with threshold: normal-quantile:Q, the fraction of normal train images set aside before fitting (default 0.1)",
}


MAX_YAML_NODES = 100_000  # a suite is a few hundred nodes; aliases must not expand beyond this
MAX_CELLS = 1_000_000  # default cap on a grid (top-level ``max_cells`` raises it)
MAX_MAP_SIZE = 4096  # px; a larger evaluation resolution holds more pixels than any published benchmark image
SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Entry:
    """One registered component with its keyword arguments (as written, normalised)."""

    name: str
    label: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: str = field(default="", compare=False)  # where it sits in the suite file, e.g. detectors[0]
    detectors: tuple[str, ...] = ()  # datasets only: the detector labels it is evaluated with (empty: all)
    attacks: tuple[str, ...] = ()  # detectors only: the attack labels it is evaluated with (empty: all)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclass(frozen=True)
class Suite:
    name: str
    file: str
    seeds: tuple[int, ...]
    datasets: tuple[Entry, ...]
    detectors: tuple[Entry, ...]
    attacks: tuple[Entry, ...]  # list-valued kwargs not yet expanded
    batch_size: int = 16
    map_size: int | None = None  # None: each detector's input size
    description: str = ""
    validity: bool = False
    threshold: str = "oracle"  # or "normal-quantile:Q"
    headline: tuple[str, float] | None = None  # (norm, ε) the leaderboard ranks by
    examples: int = 2  # adversarial examples kept per class and attacked cell
    holdout: float = 0.0  # fraction of normal train images held out (normal-quantile only)


def registries() -> dict[str, Registry]:
    """The registries a suite section names entries from."""
    from robustad_bench.adapters import DETECTORS

    return {"datasets": DATASETS, "detectors": DETECTORS, "attacks": ATTACKS}


def expand_attack(entry: Entry) -> list[dict[str, Any]]:
    """List-valued kwargs expand into the product of their values."""
    keys = list(entry.kwargs)
    values = [v if isinstance(v, list) else [v] for v in entry.kwargs.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def check_entry(section: str, i: int, raw: Any, registry: Registry, file: str, problems: list,
                 max_cells: int = MAX_CELLS) -> Entry | None:
    path = f"{section}[{i}]"
    if not isinstance(raw, dict) or "name" not in raw:
        problems.append(UserError(f"each entry needs a 'name' key, got {raw!r}", file=file, key=path))
        return None
    name = raw["name"]
    if not isinstance(name, str):
        problems.append(UserError(f"'name' must be a registered name (a string), got {name!r}; registered: "
                                  f"{', '.join(registry.names())}", file=file, key=f"{path}.name"))
        return None
    if name not in registry:
        problems.append(UserError(registry.unknown_message(name), file=file, key=f"{path}.name"))
        return None
    target = registry.get(name)
    params = target.parameters() if section == "attacks" else parameters(target)
    label = raw.get("label", name)
    if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip():
        problems.append(UserError(f"'label' names the entry on the leaderboard: a non-empty string, got {label!r}",
                                  file=file, key=f"{path}.label"))
        return None
    narrows = {"datasets": "detectors", "detectors": "attacks"}.get(section)  # the key that restricts an entry's cells
    reserved = ("name", "label", narrows) if narrows else ("name", "label")
    kwargs, bad = {}, False
    only = raw.get(narrows, []) if narrows else []
    if not isinstance(only, list) or not only and narrows in raw or not all(isinstance(d, (str, int, float)) for d in only):
        problems.append(UserError(f"must be a non-empty list of {narrows[:-1]} labels of this suite, got {only!r}",
                                  file=file, key=f"{path}.{narrows}"))
        bad, only = True, []
    only = [str(d) for d in only]
    for key, value in raw.items():
        if key in reserved:
            continue
        if key not in params:
            allowed = ", ".join([*reserved[1:], *params])
            problems.append(UserError(f"unknown key {key!r} for {name!r}; allowed: {allowed}", file=file, key=f"{path}.{key}"))
            bad = True
            continue
        annotation = params[key][0]
        expands = section == "attacks" and isinstance(value, list)
        if expands and not value:
            problems.append(UserError("an empty list expands to no grid point; give at least one value",
                                      file=file, key=f"{path}.{key}"))
            bad = True
            continue
        try:
            kwargs[key] = [coerce(v, annotation) for v in value] if expands else coerce(value, annotation)
        except BadValue as err:
            problems.append(UserError(str(err), file=file, key=f"{path}.{key}"))
            bad = True
    missing = [k for k, (_, default) in params.items() if default is inspect.Parameter.empty and k not in raw]
    for key in missing:
        problems.append(UserError(f"{name!r} needs the key {key!r}", file=file, key=path))
        bad = True
    if bad:
        return None
    entry = Entry(name=name, label=str(label), kwargs=kwargs, key=path, **({narrows: tuple(only)} if narrows else {}))
    if section == "attacks":  # threat model, knowledge and the attack's own check, per grid point
        points = math.prod(len(v) for v in kwargs.values() if isinstance(v, list))
        if points > max_cells:
            problems.append(UserError(f"its lists expand to {points:,} attack points, more than max_cells = {max_cells:,}",
                                      file=file, key=path))
            return None
        found = {pair: None for point in expand_attack(entry) for pair in target.problems(target.resolve(point))}
        for key, problem in found:  # each distinct problem once, however many grid points share it
            problems.append(UserError(problem, file=file, key=f"{path}.{key}"))
    return entry


def duplicate_points(seeds: list, sections: dict[str, tuple[Entry, ...]], file: str) -> list[UserError]:
    """Grid points written twice would compute twice and write two rows for one cell: a
    repeated seed, a repeated category, or an attack point (name, label and every
    parameter, defaults filled in) that two entries — or one list — produce twice."""
    problems = []
    if repeated := sorted({s for s in seeds if isinstance(s, int) and seeds.count(s) > 1}):
        problems.append(UserError(f"seed {repeated} is listed more than once", file=file, key="seed"))
    for entry in sections.get("datasets", ()):
        categories = entry.kwargs.get("categories") or []
        if repeated := sorted({c for c in categories if categories.count(c) > 1}):
            problems.append(UserError(f"categor{'y' if len(repeated) == 1 else 'ies'} {repeated} listed more than once",
                                      file=file, key=f"{entry.key}.categories"))
    first: dict[str, str] = {}
    for entry in sections.get("attacks", ()):
        spec = ATTACKS.get(entry.name)
        for point in expand_attack(entry):
            key = json.dumps([entry.name, entry.label, spec.resolve(point)], sort_keys=True, default=str)
            if key in first:
                problems.append(UserError(f"the same attack point ({entry.name}, label {entry.label!r}, {point}) is also "
                                          f"given by {first[key]}; give each a distinct 'label:' or remove one",
                                          file=file, key=entry.key))
            first.setdefault(key, entry.key)
    return problems


def parse_headline(raw: Any, file: str, problems: list) -> tuple[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"norm", "eps"} or raw["norm"] not in ("linf", "l2"):
        problems.append(UserError(f"must be {{norm: linf|l2, eps: E}}, got {raw!r}", file=file, key="headline"))
        return None
    try:
        eps = parse_float(raw["eps"])
    except BadValue as err:
        problems.append(UserError(str(err), file=file, key="headline.eps"))
        return None
    if eps <= 0:
        problems.append(UserError(f"must be positive, got {raw['eps']!r}", file=file, key="headline.eps"))
        return None
    return raw["norm"], eps


def has_threat(attacks: tuple[Entry, ...], threat: tuple[str, float]) -> bool:
    """Whether an attack point of ``attacks`` runs at the threat model (norm, ε)."""
    for entry in attacks:
        spec = ATTACKS.get(entry.name)
        for point in expand_attack(entry):
            resolved = spec.resolve(point)
            if resolved.get("norm", "linf") == threat[0] and math.isclose(float(resolved.get("eps", 0.0)), threat[1], rel_tol=1e-9):
                return True
    return False


def threshold_quantile(rule: Any) -> float | None:
    """Q of ``normal-quantile:Q`` (0 < Q < 1); None for ``oracle`` or anything malformed."""
    if not isinstance(rule, str) or not rule.startswith("normal-quantile:"):
        return None
    try:
        q = float(rule.removeprefix("normal-quantile:"))
    except ValueError:
        return None
    return q if 0 < q < 1 else None


def grid_size(seeds: list, sections: dict[str, tuple[Entry, ...]]) -> int:
    """A lower bound on the number of cells, counted without expanding the grid."""
    detectors = len(sections["detectors"])
    pairs = sum(len(d.kwargs.get("categories") or [None]) * (len(d.detectors) or detectors) for d in sections["datasets"])
    points = sum(math.prod(len(v) for v in a.kwargs.values() if isinstance(v, list)) for a in sections["attacks"])
    return len(seeds) * pairs * points


def deep_check(suite: Suite) -> None:
    """The components' own ``check_config`` (e.g. timm backbone names); raises ``SuiteErrors``.

    Kept apart from the schema check because it may import heavy libraries (timm takes
    seconds): ``validate`` always runs it, ``run`` only when there is model work to do.
    """
    by_section = registries()
    problems = []
    for section in ("datasets", "detectors"):
        for entry in getattr(suite, section):
            target = by_section[section].get(entry.name)
            for problem in getattr(target, "check_config", lambda **_: [])(**entry.kwargs):
                problems.append(UserError(problem, file=suite.file, key=entry.key))
    if problems:
        raise SuiteErrors(problems)



class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, got {key!r}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def expanded_size(node, memo: dict | None = None) -> int:
    """Nodes in the document once every alias is expanded (computed without expanding)."""
    memo = {} if memo is None else memo
    if id(node) not in memo:
        memo[id(node)] = 1  # guards recursive aliases
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        memo[id(node)] = 1 + sum(expanded_size(c, memo) for c in children)
    return memo[id(node)]


def read_yaml(path: Path) -> Any:
    """A suite file's content: UTF-8, no key twice, no alias bomb."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError("suite file not found", file=file) from None
    except IsADirectoryError:
        raise UserError("is a folder; give the suite's .yaml file", file=file) from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=file) from None
    except OSError as err:
        raise UserError(f"cannot be read ({err.strerror})", file=file) from None
    try:
        node = yaml.compose(text, Loader=StrictLoader)
        if node is not None and (size := expanded_size(node)) > MAX_YAML_NODES:
            raise UserError(f"aliases expand to {size} YAML nodes (at most {MAX_YAML_NODES}); write the suite out", file=file)
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise UserError(f"not valid YAML: {err}", file=file) from None
    except RecursionError:
        raise UserError("nests lists or mappings too deeply to read (a suite is a few levels deep)", file=file) from None


def load_suite(path: str | Path, *, deep: bool = True) -> Suite:
    """Read and validate a suite file; raises ``SuiteErrors`` listing every problem."""
    file = str(path)
    raw = read_yaml(Path(path))
    suite = parse_suite(raw, file=file, default_name=Path(path).stem)
    if deep:
        deep_check(suite)
    return suite


def parse_suite(raw: Any, *, file: str, default_name: str = "suite") -> Suite:
    if not isinstance(raw, dict):
        raise UserError("a suite must be a mapping with keys: " + ", ".join(TOP_LEVEL), file=file)
    problems: list[UserError] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(UserError(f"unknown top-level key {key!r}; allowed: {', '.join(TOP_LEVEL)}", file=file, key=str(key)))
    seeds = raw.get("seed", 0)
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds):
        problems.append(UserError(f"seed must be an integer in [0, 2^32) or a list of them, got {raw.get('seed')!r}",
                                  file=file, key="seed"))
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not SUITE_NAME.match(name) or ".." in name:
        problems.append(UserError(f"name must be a folder name (letters, digits, _ . -; it names runs/<name>), got {name!r}",
                                  file=file, key="name"))
    max_cells = raw.get("max_cells", MAX_CELLS)
    if not isinstance(max_cells, int) or isinstance(max_cells, bool) or max_cells < 1:
        problems.append(UserError(f"must be a positive integer, got {max_cells!r}", file=file, key="max_cells"))
        max_cells = MAX_CELLS
    scalars = {}
    for key, default, least, most in (("batch_size", 16, 1, None), ("map_size", None, 1, MAX_MAP_SIZE), ("examples", 2, 0, None)):
        value = raw.get(key, default)
        if value is None and key == "map_size":
            scalars[key] = None
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least or (most is not None and value > most):
            bounds = f"≥ {least}" if most is None else f"in [{least}, {most}]"
            problems.append(UserError(f"must be an integer {bounds}, got {value!r}", file=file, key=key))
        scalars[key] = value
    if not isinstance(raw.get("description", ""), str):
        problems.append(UserError(f"must be a string (free text), got {raw['description']!r}", file=file, key="description"))
    threshold = raw.get("threshold", "oracle")
    quantile = threshold_quantile(threshold)
    if quantile is None and threshold != "oracle":
        problems.append(UserError(f"must be oracle or normal-quantile:Q with 0 < Q < 1, got {threshold!r}", file=file, key="threshold"))
    holdout = raw.get("holdout", 0.1)
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 < holdout < 1:
        problems.append(UserError(f"must be a fraction in (0, 1), got {holdout!r}", file=file, key="holdout"))
    elif "holdout" in raw and quantile is None:
        problems.append(UserError("only used with threshold: normal-quantile:Q; remove it or set the threshold rule",
                                  file=file, key="holdout"))
    headline = parse_headline(raw.get("headline"), file, problems)
    validity = raw.get("validity", False)
    if not isinstance(validity, bool):
        problems.append(UserError(f"must be true or false, got {validity!r}", file=file, key="validity"))
    sections = {}
    for section, registry in registries().items():
        entries = raw.get(section)
        if not isinstance(entries, list) or not entries:
            problems.append(UserError(f"must be a non-empty list of {{name: ..., ...}} entries; registered: {', '.join(registry.names())}", file=file, key=section))
            continue
        checked = [check_entry(section, i, e, registry, file, problems, max_cells) for i, e in enumerate(entries)]
        sections[section] = tuple(e for e in checked if e is not None)
        labels = [e.label for e in sections[section]]
        for label in {lb for lb in labels if labels.count(lb) > 1 and section != "attacks"}:
            problems.append(UserError(f"two entries share the label {label!r}; give each a distinct 'label:'", file=file, key=section))
    problems += duplicate_points(seeds, sections, file)
    if len(sections) == 3 and (size := grid_size(seeds, sections)) > max_cells:
        problems.append(UserError(f"the grid has at least {size:,} cells, more than max_cells = {max_cells:,}; "
                                  "split the suite or raise max_cells", file=file, key="attacks"))
    if headline is not None and "attacks" in sections and not has_threat(sections["attacks"], headline):
        problems.append(UserError(f"no attack of the suite runs at {headline[0]} ε = {headline[1]:g}: the leaderboard would rank "
                                  "by an empty column; give a threat model an attack runs at", file=file, key="headline"))
    detector_labels = [d.label for d in sections.get("detectors", ())]
    for dataset in sections.get("datasets", ()):
        if unknown := [d for d in dataset.detectors if d not in detector_labels]:
            problems.append(UserError(f"{unknown} are not detector labels of this suite; detector labels: {', '.join(detector_labels)}",
                                      file=file, key=f"{dataset.key}.detectors"))
    attack_labels = [a.label for a in sections.get("attacks", ())]
    for detector in sections.get("detectors", ()):
        if unknown := [a for a in detector.attacks if a not in attack_labels]:
            problems.append(UserError(f"{unknown} are not attack labels of this suite; attack labels: {', '.join(dict.fromkeys(attack_labels))}",
                                      file=file, key=f"{detector.key}.attacks"))
    for attack in sections.get("attacks", ()):
        sources = attack.kwargs.get("source") if ATTACKS.get(attack.name).kind == "transfer" else None
        for source in (sources if isinstance(sources, list) else [sources] if sources else []):
            if source not in detector_labels:
                problems.append(UserError(f"transfer source {source!r} is not a detector of this suite; detector labels: {', '.join(detector_labels)}", file=file, key=f"{attack.key}.source"))
    if problems:
        raise SuiteErrors(problems)
    return Suite(
        name=str(raw.get("name", default_name)), file=file, seeds=tuple(seeds),
        datasets=sections["datasets"], detectors=sections["detectors"], attacks=sections["attacks"],
        description=str(raw.get("description", "")), validity=validity is True, **scalars,
        threshold=threshold, holdout=float(holdout) if quantile is not None else 0.0, headline=headline,
    )
