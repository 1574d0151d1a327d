"""Our APGD and Square against the official AutoAttack code (``pyautoattack``), per category.

    python benchmarks/official_parity.py [--suite suites/validity.yaml] [--eps 2/255 8/255]
                                         [--apgd-steps 100] [--square-queries 300] [--device cpu|cuda]

Fits each detector of the suite on each category of its first dataset, then runs ``apgd``
and ``square`` (detection objective, clean F1 threshold, seed 0) with ``impl: ours`` and
``impl: official`` at the same ε, steps or queries, and prints the mean per-image objective
y·s and the image AUROC of each. Ours should be at least as strong (tests assert it on tiny
sizes; this prints the figures at a suite's sizes).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from robustad_bench.adapters import create_detector
from robustad_bench.core.schema import parse_float
from robustad_bench.harness.attacks import Objective, run_attack
from robustad_bench.harness.grid import build_dataset
from robustad_bench.harness.suite import load_suite
from robustad_bench.harness.tasks import clean_thresholds, seeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="suites/validity.yaml")
    parser.add_argument("--eps", nargs="+", default=["2/255", "8/255"])
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--square-queries", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    suite, device = load_suite(args.suite), torch.device(args.device)
    dataset = build_dataset(suite.datasets[0])
    data_dir = Path(tempfile.mkdtemp(prefix="robustad-bench-data-"))
    print(f"{'detector':<16} {'category':<9} {'attack':<12} {'eps':>6}  {'objective ours / official':>26}  {'AUROC ours / official':>22}")
    for entry in suite.detectors:
        for category in dataset.categories:
            split = dataset.load(category, seed=0, data_dir=data_dir)
            with seeded(0):
                detector = create_detector(entry.name, **entry.kwargs)
            detector.set_category(category)
            split = split.resized(detector.input_size)
            detector.to(device).eval()
            detector.fit(split.train.to(device), seed=0)
            detector.eval()
            x, labels = split.test.to(device), torch.from_numpy(split.labels).to(device)
            with torch.no_grad():
                clean = detector(x)
            threshold = clean_thresholds(split.labels, clean.score.cpu().numpy(), clean.map.cpu().numpy(), None).image
            objective = Objective(detector, labels, None, "detection")
            for eps_text in args.eps:
                eps = parse_float(eps_text)
                for attack, budget in (("apgd", args.apgd_steps), ("square", args.square_queries)):
                    results = {}
                    for impl in ("ours", "official"):
                        adv = run_attack(attack, detector, x, labels, eps=eps, steps=budget, impl=impl, threshold=threshold,
                                         pixel_threshold=0.0)
                        with torch.no_grad():
                            scores = detector(adv).score.cpu().numpy()
                        results[impl] = (float(objective(adv).mean()), roc_auc_score(split.labels, scores))
                    (o_ours, a_ours), (o_off, a_off) = results["ours"], results["official"]
                    print(f"{entry.label:<16} {category:<9} {f'{attack}-{budget}':<12} {eps_text:>6}  "
                          f"{o_ours:>12.4f} / {o_off:<11.4f}  {a_ours:>10.3f} / {a_off:<9.3f}")


if __name__ == "__main__":
    main()
