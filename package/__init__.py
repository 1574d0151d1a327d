"""robustad-bench: adversarial robustness benchmark for visual anomaly detection.

The sub-packages: ``robustad_bench.harness`` (suites, datasets, attacks, metrics, runner,
CLI), ``robustad_bench.adapters`` (the detector contract and the detectors) and
``robustad_bench.leaderboards`` (Markdown and the static site).
"""

from __future__ import annotations

from robustad_bench.harness import __version__

__all__ = ["__version__"]
