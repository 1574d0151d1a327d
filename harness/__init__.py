"""robustad-bench harness: suites, grid, cache, datasets, attacks, metrics, runner and CLI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robustad-bench")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
