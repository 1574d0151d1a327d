"""``robustad-bench`` command line (DESIGN §5).

Exit codes: 0 ok; 2 bad input (the message names file, key and allowed values);
1 a cell failed (the others still ran and are kept; see its traceback file);
3 ``render --compare`` found regressions.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import urllib.parse
from functools import partial
from pathlib import Path

from robustad_bench.core.errors import SuiteErrors, UserError

LISTABLE = ("detectors", "attacks", "datasets", "metrics", "backends", "calibrators")


EXIT_CODES = """exit codes:
  0  ok
  1  a cell failed (the other cells still ran and are kept; its row names a traceback file),
     or check-detector found a broken check
  2  bad input: the message names the file, the key and the allowed values
  3  render --compare found regressions
  130 interrupted (finished cells are kept; run again to resume)"""


def finite_number(text: str) -> float:
    """An argparse type: a finite float (``nan`` and ``inf`` are refused, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number") from None
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}") from None
    return value


def default_cache() -> Path:
    """$ROBUSTAD_BENCH_CACHE, else $XDG_CACHE_HOME/robustad-bench, else ~/.cache/robustad-bench."""
    if os.environ.get("ROBUSTAD_BENCH_CACHE"):
        return Path(os.environ["ROBUSTAD_BENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "robustad-bench"


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="robustad-bench", description="Adversarial robustness benchmark for visual anomaly detection.",
                                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"robustad-bench {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (skips finished cells)")
    run.add_argument("suite", help="the suite's YAML file (e.g. suites/quick.yaml)")
    run.add_argument("--out", help="output folder (default runs/<suite name>)")
    run.add_argument("--cache", help=f"cache folder (default $ROBUSTAD_BENCH_CACHE or {default_cache()})")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    run.add_argument("--backend", default="local", help="local | slurm | ray (see robustad-bench list backends)")
    run.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                     help="passed to the backend, e.g. slurm_partition=gpu, timeout_min=600, num_gpus=1")
    run.add_argument("--workers", type=positive_int, help="parallel fit groups (processes; default: one per visible GPU on CUDA, else 1)")
    run.add_argument("--only", help="run only cells whose id matches this glob (substring if no wildcard)")
    run.add_argument("--dry-run", action="store_true", help="print the cells and stop")
    run.add_argument("--estimate", action="store_true", help="with --dry-run: probe each detector on --device and print the "
                                                             "projected time per detector and attack")
    run.add_argument("--force", action="store_true", help="recompute even cached cells")
    run.add_argument("--wait", action="store_true", help="if another run is writing into --out, queue behind it (default: exit 2)")
    run.add_argument("--append", action="store_true", help="write into an --out that holds another suite's results, keeping them")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    val = sub.add_parser("validate", help="check a suite (schema + registries), no compute")
    val.add_argument("suite", help="the suite's YAML file")
    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("kind", choices=LISTABLE, help="what to list: " + ", ".join(LISTABLE))
    ren = sub.add_parser("render", help="results → leaderboard.md + static site")
    ren.add_argument("dir", help="a run folder (holds results.jsonl)")
    ren.add_argument("--site", help="site folder (default DIR/site)")
    ren.add_argument("--compare", metavar="PREV_DIR", help="a previous run folder: write changes.md and exit 3 on regressions")
    ren.add_argument("--tolerance", type=finite_number, default=0.01, help="AUROC change (fraction) below which nothing is reported (default 0.01)")
    ren.add_argument("--entries", action="append", default=[], metavar="DIR",
                     help="a folder of submitted entry files to merge (leaderboards/entries/ is read when present)")
    ren.add_argument("--reported", action="append", default=[], metavar="DIR",
                     help="a folder of reported tables (*.yaml) beside the shipped ones (leaderboards/reported/)")
    rep = sub.add_parser("reproduce", help="the run's measurements beside the numbers the papers report; exit 3 beyond the tolerance")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds results.jsonl)")
    rep.add_argument("--tolerance", type=finite_number, default=2.0, help="largest |measured − reported| in points (default 2.0)")
    rep.add_argument("--reported", action="append", default=[], metavar="DIR",
                     help="a folder of reported tables (*.yaml) beside the shipped ones")
    chd = sub.add_parser("check-detector", help="the admission check: does a detector keep the contract the attacks rely on?")
    chd.add_argument("detector", help="a registered detector name, or an import path mypkg.module:Class")
    chd.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                     help="constructor keys (YAML values) over the detector's registered tiny configuration")
    chd.add_argument("--seed", type=int, default=0)
    sbm = sub.add_parser("submit", help="a run's entry + its model card → one JSON file for leaderboards/entries/")
    sbm.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds results.jsonl)")
    sbm.add_argument("--card", required=True, help="the model card, YAML (schema: leaderboards/schemas/model_card.schema.json)")
    sbm.add_argument("--out", default="leaderboards/entries", help="where the entry file goes (default leaderboards/entries/)")
    data = sub.add_parser("data", help="embedded data and layout checks")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="generate an embedded dataset; for a published one, print where to get it "
                                               "(brats: export NIfTI volumes to slices)")
    prep.add_argument("name", help="a registered dataset (robustad-bench list datasets)")
    prep.add_argument("--root", help="folder to write to (textures, digits, brats)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--from", dest="source", help="brats: the folder of BraTS2021_XXXXX/*_flair.nii.gz volumes to export")
    dl = data_sub.add_parser("download", help="fetch a published dataset's archives (resumable, checksummed), unpack them "
                                              "safely into its root and check the layout; sets behind a login print the steps")
    dl.add_argument("name", help="a registered dataset (robustad-bench list datasets)")
    dl.add_argument("--root", help="the dataset's folder (default $ROBUSTAD_DATA/<name>)")
    dl.add_argument("--categories", nargs="+", help="unpack and check only these categories (default: all)")
    dl.add_argument("--url", action="append", default=[], help="a mirror, one per archive in order (the published "
                                                               "checksums still apply unless --sha256 is given)")
    dl.add_argument("--sha256", action="append", default=[], help="the expected sha256 per --url, in order")
    dl.add_argument("--cache", help=f"where archives are kept and reused (default <cache>/downloads, cache "
                                    f"$ROBUSTAD_BENCH_CACHE or {default_cache()})")
    dl.add_argument("--retries", type=int, default=3, help="retries of a transient failure (default 3)")
    dl.add_argument("--timeout", type=finite_number, default=30.0, help="seconds without data before a try fails (default 30)")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    chk = data_sub.add_parser("check", help="verify a folder's layout, pairing, sizes and counts against the published ones")
    chk.add_argument("name", help="a registered dataset (robustad-bench list datasets)")
    chk.add_argument("--root", help="the dataset's folder (default $ROBUSTAD_DATA/<name>)")
    chk.add_argument("--categories", nargs="+", help="only these categories (default: all published ones)")
    wts = sub.add_parser("weights", help="the pretrained weights a suite needs: fetch them ahead of a run (offline nodes, clusters)")
    wts_sub = wts.add_subparsers(dest="weights_command", required=True)
    wfetch = wts_sub.add_parser("fetch", help="download every backbone and checkpoint SUITE loads into the caches timm and "
                                              "torch read ($HF_HOME, $TORCH_HOME), record their sha256, print what was fetched")
    wfetch.add_argument("suite", help="the suite YAML")
    wfetch.add_argument("--verify", action="store_true", help="fetch nothing: re-check every file against the publisher's "
                                                              "sha256 (hub files) or the one recorded at its first fetch; exit 2 on a mismatch or a missing file")
    wfetch.add_argument("--cache", help=f"where the sha256 records are kept (default $ROBUSTAD_BENCH_CACHE or {default_cache()})")
    cache = sub.add_parser("cache", help="what the cache holds (info) and removing what is no longer used (prune)")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    info = cache_sub.add_parser("info", help="size by kind (fit, eval, data) and by suite")
    info.add_argument("--cache", help=f"cache folder (default $ROBUSTAD_BENCH_CACHE or {default_cache()})")
    prn = cache_sub.add_parser("prune", help="delete fit artifacts, evaluated cells and generated data no run used lately")
    prn.add_argument("--cache", help=f"cache folder (default $ROBUSTAD_BENCH_CACHE or {default_cache()})")
    prn.add_argument("--older-than", type=finite_number, metavar="DAYS", help="only what no run has used for DAYS days")
    prn.add_argument("--keep-suite", action="append", default=[], metavar="SUITE", help="keep everything this suite (its name) uses")
    prn.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    return p


def cmd_cache(args) -> int:
    from tabulate import tabulate

    from .cache import cache_info, prune

    root = Path(args.cache or default_cache()).expanduser()
    if not root.is_dir():
        raise UserError(f"no cache at {str(root)!r}", key="--cache")
    if args.cache_command == "info":
        by_kind, by_suite, total = cache_info(root)
        print(f"cache {root}: {human(total)} in all")
        print(tabulate([(k, n, human(b)) for k, (n, b) in sorted(by_kind.items())], headers=["kind", "items", "size"]))
        print()
        print(tabulate([(k, n, human(b)) for k, (n, b) in by_suite.items()], headers=["suite", "items", "size"]))
        return 0
    if args.older_than is None and not args.keep_suite:
        raise UserError("say what to prune: --older-than DAYS and/or --keep-suite SUITE (to empty the cache, delete "
                        f"{str(root)!r})", key="cache prune")
    if args.older_than is not None and args.older_than < 0:
        raise UserError(f"--older-than must be a number of days ≥ 0, got {args.older_than}", key="--older-than")
    removed, freed = prune(root, older_than=args.older_than, keep_suites=args.keep_suite, dry_run=args.dry_run)
    print(f"{'would remove' if args.dry_run else 'removed'} {removed} item(s), {human(freed)}")
    return 0


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def cmd_validate(args) -> int:
    from .datacheck import check_suite_data
    from .plan import make_plan
    from .suite import load_suite
    from .weights import check_weights

    suite = load_suite(args.suite)
    notes = check_suite_data(suite, defer_unreachable=True)
    plan = make_plan(suite, keyed=False)  # raises when the suite resolves to no cell
    notes += check_weights(suite, strict=False, defer=True)  # every missing weight file named; offline, run will stop
    for note in notes:
        print(f"note: {note}")
    print(f"{args.suite}: ok ({len(plan.cell_ids)} cells)")
    return 0


def cmd_list(args) -> int:
    from .backends import BACKENDS
    from .calibration import CALIBRATORS
    from .metrics import METRICS
    from .suite import registries

    if args.kind == "metrics":  # every column a row's metrics carry, with what it is
        described = {name: (METRICS.get(name).__doc__ or "").strip().splitlines()[0] for name in METRICS.names()}
        for name, text in described.items():
            print(f"{name:<17} {text}")
        return 0
    registry = {**registries(), "backends": BACKENDS, "calibrators": CALIBRATORS}[args.kind]
    for name in registry.names():
        if args.kind == "attacks":  # with the metadata each attack declares
            spec = registry.get(name)
            print(f"{name:<12} {spec.kind:<11} {'+'.join(spec.tasks):<23} {'iterative' if spec.iterative else ''}".rstrip())
        else:
            print(name)
    return 0


def default_workers(device: str) -> int:
    """One local worker per visible GPU when the run is on CUDA, else one."""
    import torch

    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return max(1, torch.cuda.device_count()) if on_cuda else 1


def run_folders(args) -> tuple[Path, Path]:
    """``--out`` and ``--cache`` as the run uses them, defaults filled in (torch-free: checked
    before the completion fast path); a file where a folder must be is an error."""
    from .complete import default_out

    out, cache = Path(args.out or default_out(Path(args.suite))), Path(args.cache or default_cache()).expanduser()
    for flag, folder in (("--out", out), ("--cache", cache)):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{str(folder)!r} is a file; {flag} must be a folder", key=flag)
    return out, cache


def cmd_run(args) -> int:
    from .complete import finished_rows, stamp_complete

    out, _ = run_folders(args)
    # an unchanged, complete run: nothing to load — on the default device and backend only: any other is
    # checked on the full path (resolve_device, the backend registry), which then finds every cell done
    if not (args.dry_run or args.force or args.only or args.estimate or args.device not in ("auto", "cpu")
            or args.backend != "local" or args.backend_option or args.workers is not None):
        rows = finished_rows(Path(args.suite), out)
        if rows is not None:
            print(f"{rows} rows in {out / 'results.jsonl'}: 0 computed, 0 from cache, {rows} already done "
                  "(nothing changed since this run completed; --force recomputes)")
            print(f"leaderboard: {out / 'leaderboard.md'}  site: {out / 'site' / 'index.html'}")
            return 0

    from .backends import parse_options
    from .runner import run_suite
    from .suite import load_suite

    if args.dry_run:
        from .plan import make_plan

        suite = load_suite(args.suite)  # --estimate probes the detectors: their names must resolve
        plan = make_plan(suite, args.only, keyed=False)  # the cells and fits, without reading the data
        for task in plan.tasks:
            print(task.cell_id)
        fits = plan.fits()
        adopted = sum(f.base is not None for f in fits)
        print(f"{len(plan.tasks)} cells, {len(fits)} fit tasks"
              + (f" ({len(fits) - adopted} trained, {adopted} adopt a shared base's fit)" if adopted else ""))
        if args.estimate:
            from .estimate import estimate, report
            from .runner import resolve_device

            device = resolve_device(args.device)
            memo = Path(args.cache or default_cache()).expanduser() / "passes.json"  # pass counts, kept between runs
            print(report(*estimate(plan, device, memo=memo), device))
        return 0
    suite = load_suite(args.suite, deep=False)  # run_suite checks the rest (data, components) before its plan
    if args.estimate:
        raise UserError("--estimate goes with --dry-run (it projects a run's time without running it)", key="--estimate")
    report = run_suite(
        suite, out_dir=out, cache_dir=args.cache or default_cache(), device=args.device, only=args.only,
        force=args.force, workers=args.workers or default_workers(args.device), progress=not args.no_progress,
        backend=args.backend, backend_options=parse_options(args.backend_option), append=args.append, wait=args.wait,
    )
    print(f"{len(report.rows)} rows in {out / 'results.jsonl'}: {report.computed} computed, "
          f"{report.from_cache} from cache, {report.already_done} already done")
    if report.rows:
        from robustad_bench.leaderboards import render

        md, site, _ = render(out)
        print(f"leaderboard: {md}  site: {site}")
        if not (args.only or report.user_errors or report.failed):
            stamp_complete(Path(args.suite), out, len(report.rows), report.plan)
    for line in report.user_errors + report.failed:
        print(f"FAILED {line}", file=sys.stderr)
    if report.user_errors:
        return 2
    return 1 if report.failed else 0


def cmd_render(args) -> int:
    from robustad_bench.leaderboards import render

    if args.tolerance < 0:
        raise UserError(f"--tolerance must be at least 0, got {args.tolerance}", key="--tolerance")
    if args.site is not None and Path(args.site).exists() and not Path(args.site).is_dir():
        raise UserError(f"{args.site!r} is a file; --site must be a folder", key="--site")
    md, site, changes = render(args.dir, args.site, compare_to=args.compare, tolerance=args.tolerance, entries=args.entries,
                               reported=args.reported)
    print(f"leaderboard: {md}  site: {site}")
    if args.compare:
        regressions = [c for c in changes if c.regression]
        print(f"{len(changes)} change(s), {len(regressions)} regression(s) since {args.compare}: {Path(args.dir) / 'changes.md'}")
        for change in regressions:
            print(change.line(), file=sys.stderr)
        if regressions:
            return 3
    return 0


def cmd_check_detector(args) -> int:
    import yaml

    from robustad_bench.adapters import DETECTORS

    from .admission import build, check_detector, checks_table
    from .suite import check_entry

    cls = DETECTORS.get(args.detector, key="detector")
    config = dict(getattr(cls, "tiny", {}) or {})
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--config takes KEY=VALUE, got {item!r}", key="--config")
        config[key] = yaml.safe_load(value)
    problems: list[UserError] = []  # keys and values checked as a suite's detector entry is
    entry = check_entry("detectors", 0, {"name": args.detector, **config}, DETECTORS, "--config", problems)
    if entry is None:
        raise SuiteErrors(problems)
    config = entry.kwargs
    checks = check_detector(partial(build, cls, config), seed=args.seed)
    print(f"{args.detector} with {config}")
    print(checks_table(checks))
    failed = [c.name for c in checks if c.passed is False]
    verdict = ("admitted score-only: every check passes (no gradient or surrogate attack runs on it)"
               if not getattr(cls, "differentiable", True) else "admitted: every check passes")
    print(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else verdict, file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def cmd_reproduce(args) -> int:
    from tabulate import tabulate

    from robustad_bench.leaderboards.reported import compare_reported, read_reported

    from .rows import read_rows

    if args.tolerance < 0:
        raise UserError(f"--tolerance must be at least 0, got {args.tolerance}", key="--tolerance")
    path = Path(args.run_dir) / "results.jsonl"
    rows = read_rows(path)
    if not rows:
        raise UserError(f"no results in {str(path)!r}; run a suite first", key="RUN_DIR")
    reported = read_reported([Path(f) for f in args.reported])
    comparisons = compare_reported(rows, reported)
    if not comparisons:  # nothing to check passes nothing: say so, do not pass silently
        methods = sorted({f"{d} on {r.dataset}" for r in reported for d in r.detectors})
        raise UserError(f"{args.run_dir!r} measures no method, dataset and protocol a paper reports; reported: "
                        f"{', '.join(methods[:12])}{' …' if len(methods) > 12 else ''} (clean, or {reported[0].protocol.text()})",
                        key="RUN_DIR")
    lines = [[c.detector, c.reported.method, c.reported.dataset, c.reported.metric, c.setting, f"{100 * c.measured:.1f}",
              f"{100 * c.reported_value:.1f}", f"{c.delta:+.1f}", "ok" if abs(c.delta) <= args.tolerance else "MISS",
              c.reported.table] for c in comparisons]
    print(tabulate(lines, headers=["entry", "method", "dataset", "metric", "setting", "measured", "reported", "Δ", "", "source"],
                   disable_numparse=True))
    misses = [c for c in comparisons if abs(c.delta) > args.tolerance]
    print(f"{len(comparisons)} reported value(s) measured, {len(misses)} beyond ±{args.tolerance:g} points",
          file=sys.stderr if misses else sys.stdout)
    return 3 if misses else 0


def cmd_submit(args) -> int:
    from robustad_bench.leaderboards.submit import submit

    path = submit(args.run_dir, args.card, args.out)
    print(f"entry written: {path} (open a pull request that adds this one file)")
    return 0


def cmd_weights(args) -> int:
    from tabulate import tabulate

    from robustad_bench.core.files import file_sha256

    from . import weights
    from .suite import load_suite

    suite = load_suite(args.suite)
    cache = Path(args.cache).expanduser() if args.cache else default_cache()
    wanted = weights.needed(suite)
    if not wanted:
        print(f"{args.suite}: every detector is randomly initialised or trained here; no pretrained weights to fetch")
        return 0
    recorded, lines, bad = weights.read_manifest(cache), [], []
    for spec, labels in wanted.items():
        found = weights.locate(spec)
        if args.verify:
            status, digest = weights.verify(found, recorded.get(spec, {}))
        else:
            status = "already here" if found.present else "fetched"
            found = found if found.present else weights.fetch(spec)
            digest = file_sha256(found.path)
            if found.published_sha256 and digest != found.published_sha256:
                status = "MISMATCH (publisher)"
            else:
                weights.record(cache, found, digest)
        bad += [spec] if status.startswith(("MISMATCH", "MISSING")) else []
        lines.append([spec, ", ".join(labels), found.source, str(found.path or "-"), digest or "-", status])
    print(tabulate(lines, headers=["weights", "detectors", "source", "file", "sha256", "status"], tablefmt="github"))
    if bad:
        print(f"{len(bad)} weight file(s) failed: {', '.join(bad)} (delete a mismatched file and fetch again)", file=sys.stderr)
        return 2
    print(f"sha256 records: {weights.manifest_path(cache)}")
    return 0


def cmd_data(args) -> int:
    return {"prepare": cmd_data_prepare, "check": cmd_data_check, "download": cmd_data_download}[args.data_command](args)


def cmd_data_download(args) -> int:
    from robustad_bench.core.archives import install
    from robustad_bench.core.download import fetch

    from .datasets import DATASETS

    cls = DATASETS.get(args.name, key="name")
    download = getattr(cls, "download", None)
    if download is None:
        raise UserError(f"{args.name} is generated here, not downloaded: robustad-bench data prepare {args.name}", key="name")
    archives = download_archives(download, args.url, args.sha256)
    if not archives:
        print(download.instructions(args.name), file=sys.stderr)
        raise UserError(f"{args.name} has no direct download (it needs a login, a licence click, or has no direct link): "
                        f"follow the steps above, then run robustad-bench data check {args.name} --root PATH", key="name")
    if args.retries < 0 or args.timeout <= 0:
        raise UserError(f"--retries must be at least 0 and --timeout positive, got {args.retries} and {args.timeout}", key="--retries")
    if not args.root and not os.environ.get("ROBUSTAD_DATA"):
        raise UserError("give --root DIR (or set ROBUSTAD_DATA): where the dataset is unpacked", key="--root")
    problems = cls.check_config(root=args.root, categories=args.categories)
    if problems:
        raise UserError("; ".join(problems), key="--root" if "root" in problems[0] else "--categories")
    root = cls(root=args.root, categories=args.categories).root
    print(f"{args.name}: licence {download.licence} ({download.page})")
    folder = Path(args.cache).expanduser() if args.cache else default_cache() / "downloads"
    fetched = []
    for url, checksum in archives:
        name = Path(urllib.parse.urlparse(url).path).name
        if not name:
            raise UserError(f"{url!r} names no file", key="--url")
        got = fetch(url, folder / args.name / name, checksum, retries=args.retries, timeout=args.timeout,
                    progress=not args.no_progress and sys.stderr.isatty())
        how = "reused" if got.reused else f"resumed at byte {got.resumed_from:,}" if got.resumed_from else "fetched"
        print(f"  {how} {got.path} ({got.digest}{'' if checksum else '; no published checksum: recorded here'})")
        fetched.append(got.path)
    chosen = set(args.categories or ())
    known = set(getattr(cls, "published", None) or ())
    placed = install(fetched, root, strip=download.strip, keep=partial(category_kept, chosen, known))
    print(f"  unpacked {placed} files under {root}")
    return cmd_data_check(argparse.Namespace(name=args.name, root=str(root), categories=args.categories))


def download_archives(download, urls: list[str], sha256: list[str]) -> list[tuple[str, str]]:
    """(url, checksum) per archive: the published ones, or the --url mirrors (with --sha256, or
    the published checksums, which a faithful mirror matches)."""
    if not urls:
        if sha256:
            raise UserError("--sha256 goes with --url (one per mirror URL)", key="--sha256")
        return list(download.archives)
    if download.archives and len(urls) != len(download.archives):
        raise UserError(f"give one --url per archive: {len(download.archives)} published, {len(urls)} given", key="--url")
    if sha256 and len(sha256) != len(urls):
        raise UserError(f"give one --sha256 per --url: {len(urls)} URLs, {len(sha256)} checksums", key="--sha256")
    published = [c for _, c in download.archives] or [""] * len(urls)
    return [(url, f"sha256:{sha256[i]}" if sha256 else published[i]) for i, url in enumerate(urls)]


def category_kept(chosen: set[str], known: set[str], name: str) -> bool:
    """With --categories, a member under another published category is left out; the rest stays."""
    first = name.split("/", 1)[0]
    return not chosen or first not in known or first in chosen


def cmd_data_check(args) -> int:
    from .datacheck import check_rows, counts_table
    from .datasets import DATASETS

    cls = DATASETS.get(args.name, key="name")
    problems = cls.check_config(root=args.root, categories=args.categories)
    if problems:
        raise UserError("; ".join(problems), key="--root" if "root" in problems[0] else "--categories")
    dataset = cls(root=args.root, categories=args.categories)
    if not dataset.reachable():
        raise UserError(f"{str(dataset.root)!r} does not exist or is not a folder; expected {dataset.layout}", key="--root")
    rows = check_rows(dataset, dataset.categories)
    if not rows:
        print(f"{args.name} is generated here (robustad-bench data prepare {args.name}); there is no folder to check")
        return 0
    print(counts_table(rows))
    bad = [r.category for r in rows if r.problems]
    if bad:
        print(f"{len(bad)} categor{'y' if len(bad) == 1 else 'ies'} with layout problems: {', '.join(bad)}", file=sys.stderr)
        return 2
    print(f"{args.name} under {dataset.root}: {len(rows)} categories ok"
          + (f" ({sum(bool(r.warnings) for r in rows)} with count warnings)" if any(r.warnings for r in rows) else ""))
    return 0


def cmd_data_prepare(args) -> int:
    from .datasets import DATASETS

    if args.seed < 0:
        raise UserError(f"--seed must be at least 0, got {args.seed}", key="--seed")
    cls = DATASETS.get(args.name, key="name")
    if args.source is not None:
        if args.name != "brats":
            raise UserError(f"--from is for the BraTS export only (data prepare brats --from NIFTI_DIR), not {args.name!r}", key="--from")
        from .datasets.brats import export

        if not args.root:
            raise UserError("give --root OUT, the folder the slices are written to (e.g. $ROBUSTAD_DATA/brats)", key="--root")
        counts = export(args.source, args.root)
        print(f"brats: {counts.train} train, {counts.test_normal} normal and {counts.test_anomalous} tumour test slices "
              f"under {args.root}; check with: robustad-bench data check brats --root {args.root}")
        return 0
    if getattr(cls, "download", None) is not None:
        print(cls.download.instructions(args.name))
        print(f"then check the folder with: robustad-bench data check {args.name} --root PATH")
        return 0
    dataset = cls()
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
    args = _parser().parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a no-op where logging is set up already
    root, before = logging.getLogger(), logging.getLogger().level
    root.setLevel(level)
    handler = {"run": cmd_run, "validate": cmd_validate, "list": cmd_list, "render": cmd_render, "data": cmd_data, "submit": cmd_submit,
               "reproduce": cmd_reproduce,
               "check-detector": cmd_check_detector, "cache": cmd_cache, "weights": cmd_weights}[args.command]
    try:
        return run_command(handler, args)
    finally:
        root.setLevel(before)  # main() called in-process (tests, notebooks) leaves logging as it found it


UNWRITABLE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EROFS: "the file system is read-only"}


def unwritable_message(err: OSError) -> str:
    """What a user can do about a folder the command cannot write (or a full disk)."""
    where = f" {str(err.filename)!r}" if err.filename else ""
    return (f"cannot write{where}: {UNWRITABLE[err.errno]}. Free space or give a writable folder (--out, --cache); "
            "finished cells are kept, and a rerun resumes where this one stopped")


def run_command(handler, args) -> int:
    """The command, with a user's mistakes printed briefly (exit 2) and Ctrl-C kept short."""
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
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise  # anything else is a bug: keep its traceback
        print(f"error: {unwritable_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
