"""Where a dataset's folder is, from a suite entry's ``root`` — without importing torch (the
rerun stamp reads it before anything heavy is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def resolve_root(root: str | None, name: str) -> Path:
    """``root`` with ``~`` and ``$VAR``/``${VAR}`` expanded; without one, ``$ROBUSTAD_DATA/<name>``."""
    if root is None:  # unset: a path that does not exist, so the data check names the variable
        return Path(os.environ.get("ROBUSTAD_DATA", "$ROBUSTAD_DATA")).expanduser() / name
    expanded = os.path.expandvars(str(root))
    if "$" in expanded:
        raise UserError(f"root {root!r} names an environment variable that is not set", key="root")
    return Path(expanded).expanduser()
