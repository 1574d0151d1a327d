"""robustad-bench: adversarial robustness benchmark for visual anomaly detection.

The sub-packages: ``robustad_bench.harness`` (suites, datasets, attacks, metrics, runner,
CLI), ``robustad_bench.adapters`` (the detector contract and the detectors) and
``robustad_bench.leaderboards`` (Markdown and the static site).
"""

from __future__ import annotations

from robustad_bench.harness import __version__


def check_detector(model, *, seed: int = 0):
    """The admission check on a detector instance (unfitted); returns the checks
    (``robustad_bench.harness.admission.Check``: name, passed, reason). The round trip loads
    the fitted state into an unfitted copy of ``model``."""
    from functools import partial

    from robustad_bench.harness.admission import check_detector as run_checks
    from robustad_bench.harness.admission import copy_of

    return run_checks(partial(copy_of, model), seed=seed)


def evaluate(detector, data, attacks, **options):
    """``robustad_bench.harness.api.evaluate``: a model through the benchmark, as a DataFrame."""
    from robustad_bench.harness.api import evaluate as run

    return run(detector, data, attacks, **options)


__all__ = ["__version__", "check_detector", "evaluate"]
