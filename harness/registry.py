"""One generic registry for every pluggable kind: detectors, attacks, datasets, metrics.

Decorator registration, duplicate names rejected, lazy ``"module:attr"`` entries so heavy
optional dependencies import only when used, and did-you-mean errors for unknown names.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._frozen = False

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
        if existing is not None and existing is not obj and not isinstance(existing, str):
            raise ValueError(f"duplicate {self.kind} name {name!r}")
        self._entries[name] = obj

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that register temporarily)."""
        assert not self._frozen, f"{self.kind} registry is frozen; cannot remove {name!r}"
        del self._entries[name]

    def freeze(self) -> None:
        self._frozen = True

    def get(self, name: str, *, file: str | None = None, key: str | None = None) -> T:
        if name not in self._entries:
            raise UserError(self.unknown_message(name), file=file, key=key)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}"

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
