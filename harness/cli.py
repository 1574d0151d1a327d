"""``robustad-bench`` command line (DESIGN §5).

Exit codes: 0 ok; 2 bad input (the message names file, key and allowed values);
1 a cell failed (the others still ran and are kept; see its traceback file).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import SuiteErrors, UserError

LISTABLE = ("detectors", "attacks", "datasets", "metrics", "backends", "calibrators")


def default_cache() -> Path:
    return Path(os.environ.get("ROBUSTAD_BENCH_CACHE", Path.home() / ".cache" / "robustad-bench"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robustad-bench", description="Adversarial robustness benchmark for visual anomaly detection.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (skips finished cells)")
    run.add_argument("suite")
    run.add_argument("--out", help="output folder (default runs/<suite name>)")
    run.add_argument("--cache", help=f"cache folder (default $ROBUSTAD_BENCH_CACHE or {default_cache()})")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    run.add_argument("--backend", default="local", help="local | slurm | ray (see robustad-bench list backends)")
    run.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                     help="passed to the backend, e.g. slurm_partition=gpu, timeout_min=600, num_gpus=1")
    run.add_argument("--workers", type=int, default=1, help="parallel fit groups (processes)")
    run.add_argument("--only", help="run only cells whose id matches this glob (substring if no wildcard)")
    run.add_argument("--dry-run", action="store_true", help="print the cells and stop")
    run.add_argument("--force", action="store_true", help="recompute even cached cells")
    run.add_argument("--wait", action="store_true", help="if another run is writing into --out, queue behind it (default: exit 2)")
    run.add_argument("--append", action="store_true", help="write into an --out that holds another suite's results, keeping them")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    val = sub.add_parser("validate", help="check a suite (schema + registries), no compute")
    val.add_argument("suite")
    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("kind", choices=LISTABLE)
    ren = sub.add_parser("render", help="results → leaderboard.md + static site")
    ren.add_argument("dir")
    ren.add_argument("--site", help="site folder (default DIR/site)")
    data = sub.add_parser("data", help="embedded data and layout checks")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="generate an embedded dataset, or check a folder's layout")
    prep.add_argument("name", help="textures | digits | mvtec")
    prep.add_argument("--root", help="folder to write to (textures) or to check (mvtec)")
    prep.add_argument("--seed", type=int, default=0)
    return p


def cmd_validate(args) -> int:
    from .grid import expand
    from .suite import load_suite

    suite = load_suite(args.suite)
    try:
        n = len(expand(suite))
        print(f"{args.suite}: ok ({n} cells)")
    except UserError as err:  # e.g. a dataset root that is absent here: the schema is still valid
        print(f"{args.suite}: ok (grid not expanded here: {err})")
    return 0


def cmd_list(args) -> int:
    from .backends import BACKENDS
    from .calibration import CALIBRATORS
    from .metrics import METRICS
    from .suite import registries

    registry = {**registries(), "metrics": METRICS, "backends": BACKENDS, "calibrators": CALIBRATORS}[args.kind]
    for name in registry.names():
        if args.kind == "attacks":  # with the metadata each attack declares
            spec = registry.get(name)
            print(f"{name:<12} {spec.kind:<11} {'+'.join(spec.tasks):<23} {'iterative' if spec.iterative else ''}".rstrip())
        else:
            print(name)
    return 0


def cmd_run(args) -> int:
    from .backends import parse_options
    from .runner import dry_run, run_suite
    from .suite import load_suite

    suite = load_suite(args.suite, deep=False)  # run_suite deep-checks when it has work to do
    if args.dry_run:
        cells = dry_run(suite, args.only)
        for cell in cells:
            print(cell.cell_id)
        print(f"{len(cells)} cells")
        return 0
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out = Path(args.out or Path("runs") / suite.name)
    for flag, folder in (("--out", out), ("--cache", Path(args.cache or default_cache()).expanduser())):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{str(folder)!r} is a file; {flag} must be a folder", key=flag)
    report = run_suite(
        suite, out_dir=out, cache_dir=args.cache or default_cache(), device=args.device, only=args.only,
        force=args.force, workers=args.workers, progress=not args.no_progress,
        backend=args.backend, backend_options=parse_options(args.backend_option), append=args.append, wait=args.wait,
    )
    print(f"{len(report.rows)} rows in {out / 'results.jsonl'}: {report.computed} computed, "
          f"{report.from_cache} from cache, {report.already_done} already done")
    if report.rows:
        from robustad_bench.leaderboards import render

        md, site = render(out)
        print(f"leaderboard: {md}  site: {site}")
    for line in report.user_errors + report.failed:
        print(f"FAILED {line}", file=sys.stderr)
    if report.user_errors:
        return 2
    return 1 if report.failed else 0


def cmd_render(args) -> int:
    from robustad_bench.leaderboards import render

    md, site = render(args.dir, args.site)
    print(f"leaderboard: {md}  site: {site}")
    return 0


def cmd_data(args) -> int:
    from .datasets import DATASETS
    from .datasets.mvtec import list_category

    if args.seed < 0:
        raise UserError(f"--seed must be at least 0, got {args.seed}", key="--seed")
    if args.name == "mvtec":
        if not args.root:
            raise UserError("data prepare mvtec needs --root PATH (the folder to check)")
        dataset = DATASETS.get("mvtec")(root=args.root)
        counts = {c: list_category(Path(args.root), c) for c in dataset.categories}
        if not counts or not any(files["train"] and files["test"] for files in counts.values()):
            raise UserError("no category in MVTec AD layout (<category>/train/good, <category>/test/<defect>) found here",
                            file=args.root, key="--root")
        for category, files in counts.items():
            print(f"{category}: {len(files['train'])} train, {len(files['test'])} test images")
        return 0
    dataset = DATASETS.get(args.name, key="name")()
    root = Path(args.root) if args.root else default_cache() / "data"
    if root.exists() and not root.is_dir():
        raise UserError(f"{str(root)!r} is a file; --root must be a folder", key="--root")
    for category in dataset.categories:
        split = dataset.load(category, seed=args.seed, data_dir=root)
        print(f"{args.name}/{category}: {split.train.shape[0]} train, {split.test.shape[0]} test "
              f"({int(split.labels.sum())} anomalous), fingerprint {dataset.fingerprint(category, seed=args.seed)}")
    print(f"data under {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "render": cmd_render, "data": cmd_data}[args.command]
    try:
        return handler(args)
    except SuiteErrors as err:
        print(f"{len(err.problems)} problem(s):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
