"""One generic registry for every pluggable kind: detectors, attacks, datasets, metrics.

Decorator registration, duplicate names rejected, lazy ``"module:attr"`` entries so heavy
optional dependencies import only when used, and did-you-mean errors for unknown names.

Plugins: an installed package that declares an entry point in the registry's group
(``robustad_bench.detectors``, ``.attacks``, ``.datasets``, ``.metrics``) adds its names on
the first lookup. The entry point names the object itself (a Detector or Dataset class, a
metric function) or, for attacks, the module whose ``register_attack`` call registers it.
A plugin that fails to import gives a warning naming its package and the error and leaves
every other name working; a plugin name that clashes with a built-in is an error naming
both. A suite may also name an object by its import path, ``"mypkg.detectors:MyDetector"``.

A suite or a model card is data, never code: whatever a name resolves to (an import path or
a plugin's entry point) must be an object of the registry's kind — a ``Detector`` subclass, a
``Dataset`` subclass, a registered attack, a metric function — checked by the registry's
``admit`` before anything is called. ``"os:system"`` resolves to a function of the os
module, is refused, and is never called.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)


def plugin_package(ep: EntryPoint) -> str:
    return ep.dist.name if getattr(ep, "dist", None) is not None else ep.value.split(":")[0].split(".")[0]


def admit_any(obj: object) -> object:
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str | None = None, *, admit: Callable[[object], T | None] = admit_any,
                 expected: str = ""):
        self.kind = kind
        self.group = group  # the entry-point group plugins declare their names in
        self.admit = admit  # what an imported object must be: returns the entry, or None to refuse it
        self.expected = expected or f"a {kind}"  # what ``admit`` accepts, in words
        self._entries: dict[str, T | str | EntryPoint] = {}
        self._frozen = False
        self._plugins_loaded = group is None
        self._plugin_names: set[str] = set()

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self._add(name, obj)
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attr"``; imported on first ``get``."""
        assert ":" in target, f"lazy {self.kind} entry must be 'module:attr', got {target!r}"
        self._add(name, target)

    def _add(self, name: str, obj: T | str) -> None:
        assert not self._frozen, f"{self.kind} registry is frozen; cannot add {name!r}"
        existing = self._entries.get(name)
        if existing is not None and existing is not obj and not isinstance(existing, (str, EntryPoint)):
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = obj

    def load_plugins(self, *, again: bool = False) -> None:
        """Add the names the installed plugins declare (once; ``again`` re-reads them, for tests)."""
        if self._plugins_loaded and not again:
            return
        self._plugins_loaded = True
        if self.group is None:
            return
        for name in self._plugin_names | {n for n in self._entries if ":" in n}:  # plugins and import paths resolved so far
            self._entries.pop(name, None)
        self._plugin_names = set()
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                raise UserError(f"plugin package {plugin_package(ep)!r} registers {self.kind} {ep.name!r} ({ep.value}), "
                                f"which is a built-in {self.kind}; the plugin must choose another name")
            self._entries[ep.name] = ep
            self._plugin_names.add(ep.name)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that register temporarily)."""
        assert not self._frozen, f"{self.kind} registry is frozen; cannot remove {name!r}"
        del self._entries[name]

    def freeze(self) -> None:
        self._frozen = True

    def get(self, name: str, *, file: str | None = None, key: str | None = None) -> T:
        if name not in self:
            raise UserError(self.unknown_message(name), file=file, key=key)
        entry = self._entries[name]
        if isinstance(entry, EntryPoint):
            try:
                loaded = entry.load()
            except Exception as err:  # a broken plugin: this name fails, the others still work
                log.warning("plugin package %r (%s) failed to load: %s: %s", plugin_package(entry), entry.value,
                            type(err).__name__, err)
                raise UserError(f"{self.kind} {name!r} comes from plugin package {plugin_package(entry)!r}, which failed "
                                f"to load: {type(err).__name__}: {err}", file=file, key=key) from None
            current = self._entries[name]  # importing the plugin may have registered the name itself
            if current is entry:
                admitted = self.admit(loaded)
                if admitted is None:
                    raise UserError(f"{self.kind} {name!r} from plugin package {plugin_package(entry)!r} ({entry.value}) "
                                    f"is {describe(loaded)}, not {self.expected}", file=file, key=key)
                current = admitted
            self._entries[name] = current
        elif isinstance(entry, str):
            module, attr = entry.split(":")
            self._entries[name] = getattr(importlib.import_module(module), attr)
        return self._entries[name]

    def unknown_message(self, name: object) -> str:
        if isinstance(name, str) and ":" in name:
            error = self._import_error(name)
            if error is None:  # it imports, but is not of this kind
                return (f"{self.kind} {name!r} resolves to {describe(self._resolve(name))}, which is not "
                        f"{self.expected}; a suite names registered objects only, it never runs code")
            return f"cannot import {self.kind} {name!r} (module:object): {error}; is its package installed in this environment?"
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        plugins = (f" If {name!r} comes from a plugin, its package is not installed in this environment "
                   f"(plugins declare entry points in {self.group!r})." if self.group else "")
        return f"unknown {self.kind} {name!r}.{hint}{plugins} Available: {', '.join(self.names())}"

    def names(self, pattern: str = "*") -> list[str]:
        self.load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern) and ":" not in n)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        if isinstance(name, str) and ":" in name and name not in self._entries:
            return self._import_path(name)
        return name in self._entries

    def _import_path(self, name: str) -> bool:
        """A ``module:object`` name: imported and kept under that name when it resolves to an
        object of this kind (never called to find out)."""
        if self._import_error(name) is not None:
            return False
        admitted = self.admit(self._resolve(name))
        if admitted is None:
            return False
        self._entries[name] = admitted
        return True

    @staticmethod
    def _resolve(name: str) -> object:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)

    @staticmethod
    def _import_error(name: str) -> str | None:
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return None if hasattr(obj, attr) else f"module {module!r} has no {attr!r}"


def describe(obj: object) -> str:
    """What an object is, for an error message (never its repr: that could run code)."""
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    qualname = getattr(obj, "__qualname__", None)
    if callable(obj) and isinstance(qualname, str):
        return f"the {type(obj).__name__} {getattr(obj, '__module__', '?')}.{qualname}"
    return f"a {type(obj).__name__} object"


def admit_subclass(base: type, obj: object) -> type | None:
    """An ``admit`` for registries of classes (with ``functools.partial``): ``obj`` when it is a
    subclass of ``base``."""
    return obj if isinstance(obj, type) and issubclass(obj, base) else None
