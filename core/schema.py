"""Check YAML values against a constructor's or function's type hints.

Supports the annotations our registered components use: ``int``, ``float``, ``bool``,
``str``, ``None``, ``Literal[...]``, ``list[T]``, unions such as ``float | None`` and
bounds declared with ``Annotated`` (``PositiveInt``, ``NonNegative``, ...). A ``float`` may
be written as a fraction string, e.g. ``8/255``; it must be finite.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


class BadValue(ValueError):
    pass


@dataclass(frozen=True)
class AtLeast:
    """A lower bound on a number, declared in a type hint: ``Annotated[int, AtLeast(1)]``."""

    bound: float


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
NonNegative = Annotated[float, AtLeast(0.0)]


def parse_float(value: Any) -> float:
    """A number, or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise BadValue(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise BadValue(f"expected a finite number, got {value!r}")
        return float(value)
    if isinstance(value, str) and (m := FRACTION.match(value)):
        numerator, denominator = float(m.group(1)), float(m.group(2))
        if denominator == 0:
            raise BadValue(f"division by zero in {value!r}")
        if not (math.isfinite(numerator) and math.isfinite(denominator) and math.isfinite(numerator / denominator)):
            raise BadValue(f"expected a finite number, got {value!r}")  # 1e400/1 is inf
        return numerator / denominator
    raise BadValue(f"expected a number or a fraction like 8/255, got {value!r}")


def describe(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        bounds = [f"≥ {m.bound:g}" for m in annotation.__metadata__ if isinstance(m, AtLeast)]
        return " ".join([describe(args[0]), *bounds])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {describe(args[0])}" if args else "a list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def coerce(value: Any, annotation: Any) -> Any:
    """Return ``value`` normalised to ``annotation`` or raise ``BadValue``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if origin is Annotated:
        value = coerce(value, args[0])
        for bound in (m for m in annotation.__metadata__ if isinstance(m, AtLeast)):
            if value is not None and value < bound.bound:
                raise BadValue(f"must be at least {bound.bound:g}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except BadValue:
                if isinstance(value, list) and get_origin(arg) in (list, tuple):
                    raise  # the arm the value is written for says best what is wrong
        raise BadValue(f"expected {describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise BadValue(f"{value!r} is not allowed; allowed: {', '.join(repr(a) for a in args)}")
    if isinstance(annotation, type) and issubclass(annotation, Enum):  # a named value: YAML gives its string
        try:
            return annotation(value)
        except ValueError:
            raise BadValue(f"{value!r} is not allowed; allowed: {', '.join(repr(m.value) for m in annotation)}") from None
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list):
            raise BadValue(f"expected {describe(annotation)}, got {value!r}")
        if not value:
            raise BadValue("an empty list selects nothing; remove the key for the default")
        return [coerce(v, args[0]) if args else v for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        return parse_float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is type(None):
        if value is None:
            return None
    else:
        return value
    raise BadValue(f"expected {describe(annotation)}, got {value!r}")


def parameters(target: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """name → (annotation, default) of the keyword arguments a YAML entry may set."""
    fn = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(fn, include_extras=True)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, Any), p.default)
    return out
