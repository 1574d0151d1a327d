"""Results → ``leaderboard.md`` (tabulate) and a static site (jinja2).

Renderers only render: every number comes from ``results.jsonl`` or from the aggregates the
harness wrote beside it (``robust.jsonl``, ``summary.json``); nothing is computed here. Which
metric columns each table shows comes from ``columns.py``.
Metric fractions are shown as percentages; ε as k/255 where it is a multiple of 1/255.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tabulate import tabulate

from robustad_bench.core.errors import UserError
from robustad_bench.harness.results import read_run_info, refuse_links
from robustad_bench.harness.rows import is_clean, read_rows
from robustad_bench.harness.summaries import read_aggregates

from .board import Table, eps_text, main_tables, threat_text
from .columns import category_cells, category_headers, settings_cells, settings_headers
from .compare import Change, changes_markdown, compare, read_board, values, write_board
from .entries import entry_pages
from .plots import write_reliability_diagrams
from .reported import Comparison, add_reported, compare_reported, read_reported
from .submit import merge, read_entries

TEMPLATES = Path(__file__).parent / "templates"


def weights_text(weights: str | None) -> str:
    return "random init" if weights == "random" else (weights or "unknown")


def attack_text(row: dict) -> str:
    """What a row (or a setting record) attacked with: title, steps, norm, ε, knowledge; ``clean``."""
    if is_clean(row):
        return "clean"
    title = row.get("attack_title") or row.get("attack_label") or row["attack"]
    norm = f" {row['norm']}" if row.get("norm") else ""
    steps = f"-{int(row['steps'])}" if row.get("steps") and row["steps"] > 1 else ""
    return f"{title}{steps}{norm} ε={eps_text(row['eps'])} ({row.get('knowledge')})"


def attack_notes(rows: list[dict]) -> list[tuple[str, str]]:
    """(attack title, note) for every attack on the board that declares a note."""
    notes = {(r.get("attack_title") or r.get("attack_label") or r["attack"], r["attack_note"]): None
             for r in rows if r.get("attack_note")}
    return list(notes)


def settings_lines(settings: list[dict], text=str) -> list[list[str]]:
    """The "All cells" lines: the harness's setting means, each metric cell as the columns table says."""
    return [[text(r["detector"]), text(weights_text(r["weights"])), text(r["dataset"]), text(attack_text(r)),
             str(r["categories"]), *settings_cells(r), text(", ".join(r["flags"]))] for r in settings]


def threshold_words(rows: list[dict]) -> tuple[str, str]:
    """(column tag, explanation) of the F1 / G-mean threshold the rows used."""
    rules = {r["threshold_rule"] for r in rows if r.get("threshold_rule")}
    if rules and all(r.startswith("normal-quantile") for r in rules):
        return ("normal-quantile thr.", "F1 and G-mean use a threshold set without test labels: the Q-quantile of clean "
                "scores on normal train images held out before fitting (" + "; ".join(sorted(rules)) + ").")
    mixed = " Some rows use a normal-quantile threshold instead (see their threshold_rule)." if len(rules) > 1 else ""
    return ("oracle thr.", "F1 and G-mean use the clean test set's F1-max threshold, fixed on the clean run and applied "
            "to attacked scores: an oracle threshold (it uses the test labels)." + mixed)


def main_markdown(tables: list[Table]) -> list[str]:
    """The ranked tables: one per dataset × task (× metric), for READMEs and PR comments."""
    parts = ["## Ranked by robust AUROC", "",
             "Robust = AUROC of the per-image worst case over every attack at that threat model (for each test image the "
             "attacked score most harmful to it); gap = clean − robust at the headline threat model.", ""]
    for t in tables:
        parts += [f"### {md_text(t.dataset)} — {t.task}: {t.title}", ""]
        if t.headline:
            parts += [f"{ranking_text(t)}.", ""]
        headers = ["#", "Entry", "Source", "Weights", "Budget", *(md_text(c.heading) for c in t.columns), "Flags"]
        parts += [f"> ⚠ **{md_text(r['detector'])}**: {md_text('; '.join(r['warnings']))}." for r in t.rows if r.get("warnings")]
        parts += [""] if any(r.get("warnings") for r in t.rows) else []
        lines = [[i + 1, md_text(r["detector"]) + (" ⚠" if r.get("warnings") else ""), source_text(r), md_text(r["weights"]), md_text(r["budget"]),
                  *(r["values"][c.key].text() for c in t.columns), md_text(", ".join(r["flags"]))] for i, r in enumerate(t.rows)]
        parts += [tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return parts


def ranking_text(table: Table) -> str:
    if any(c.kind == "robust" for c in table.columns):
        return f"Ranked by robust {table.title} at {threat_text(table.headline)}"
    return f"Values the papers report; ranked by the attacked {table.title} at {threat_text(table.headline)}"


def source_text(row: dict) -> str:
    """measured here | submitted | reported (Table N)."""
    if row.get("source") == "reported":
        return f"reported ({row['citation'].split(',')[0]})"
    return row.get("source", "")


def reproduction_markdown(comparisons: list[Comparison]) -> list[str]:
    """Measured − reported for every value the run measured too (``robustad-bench reproduce``)."""
    if not comparisons:
        return []
    lines = [[md_text(c.detector), md_text(c.reported.method), md_text(c.reported.dataset), c.reported.metric, c.setting,
              f"{100 * c.measured:.1f}", f"{100 * c.reported_value:.1f}", f"{c.delta:+.1f}", c.reported.table]
             for c in comparisons]
    return ["## Measured vs reported", "",
            "Where this run measured a method, benchmark and protocol a paper reports: measured − reported, in points.", "",
            tabulate(lines, headers=["Entry", "Method", "Dataset", "Metric", "Setting", "Measured", "Reported", "Δ", "Source"],
                     tablefmt="github", disable_numparse=True), ""]


def header_text(suites: dict, rows: list[dict]) -> str:
    """Date, package version, commit and number of cells of the run(s) behind the page."""
    runs = list(suites.values())
    bits = [f"{len(rows)} cells"]
    if runs:
        bits.append("run " + ", ".join(sorted({r.get("date", "?") for r in runs})))
        bits.append("robustad-bench " + ", ".join(sorted({str(r.get("version", "?")) for r in runs})))
        commits = sorted({r["commit"][:10] for r in runs if r.get("commit")})
        if commits:
            bits.append("commit " + ", ".join(commits))
    return " · ".join(bits)


def md_text(value) -> str:
    """A table cell of leaderboard.md: user text (labels, categories) cannot inject HTML or
    break the table."""
    return html.escape(str(value), quote=False).replace("|", "\\|")


def render_markdown(rows: list[dict], settings: list[dict], title: str, tables: list[Table] = (), header: str = "",
                    comparisons: list[Comparison] = ()) -> str:
    tag, explanation = threshold_words(rows)
    headers = ["Detector", "Weights", "Dataset", "Attack", "#cat", *(h.text for h in settings_headers(tag)), "Flags"]
    failed = [r["cell_id"] for r in rows if r.get("status") != "ok"]
    notes = [f"- **{md_text(title)}**: {md_text(note)}" for title, note in attack_notes(rows)]
    parts = [
        f"# {title}", "", *([header, ""] if header else []),
        *(main_markdown(tables) if tables else []),
        *reproduction_markdown(list(comparisons)),
        "## All cells", "",
        f"Metrics in percent, mean over categories. {explanation} "
        "ECE: 15 bins, raw min-max score → Platt posterior (5-fold cross-fitted on clean scores, applied "
        "unchanged to attacked ones); Flag AUROC: predictive entropy separating attacked from clean images. "
        "Rows with *random init* weights use randomly initialised backbones: their clean numbers "
        "are not the papers' numbers.", "",
        tabulate(settings_lines(settings, md_text), headers=headers, tablefmt="github"), "",
        *(["## Notes on attacks", "", *notes, ""] if notes else []),
        "## Per category", "",
        tabulate(category_lines(rows, md_text), headers=["Detector", "Dataset", "Category", "Attack",
                                                        *(h.text for h in category_headers(tag))],
                 tablefmt="github"),
    ]
    if failed:
        parts += ["", "## Failed cells", "", tabulate([[md_text(c)] for c in failed], headers=["cell_id"], tablefmt="github")]
    return "\n".join(parts) + "\n"


def category_lines(rows: list[dict], text=str) -> list[list[str]]:
    """The "Per category" lines: one per finished cell, each metric cell as the columns table says."""
    return [[text(r["detector"]), text(r["dataset"]), text(r["category"]), text(attack_text(r)), *category_cells(r)]
            for r in rows if r.get("status") == "ok"]


def run_headline(suites: dict) -> tuple[str, float] | None:
    return next((tuple(s["headline"]) for s in suites.values() if s.get("headline")), None)


def board_tables(out_dir: Path) -> list[Table]:
    """The ranked main tables of a run folder."""
    rows = read_rows(out_dir / "results.jsonl")
    return main_tables(rows, read_aggregates(out_dir).ranked, run_headline(read_run_info(out_dir)))


def previous_values(folder: Path) -> dict[tuple, tuple[str, float | None]]:
    """The ranked tables' values of a published site (its board.json) or of a run folder."""
    try:
        if (folder / "board.json").is_file():
            return read_board(folder / "board.json")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise UserError(f"{str(folder / 'board.json')!r} cannot be read: {err}", key="--compare") from None
    if (folder / "results.jsonl").is_file():
        return values(board_tables(folder))
    raise UserError(f"{str(folder)!r} holds neither board.json (a published site) nor results.jsonl (a run) to compare with",
                    key="--compare")


def entry_folders(extra: list[str | Path] | None) -> list[Path]:
    """``leaderboards/entries/`` under the working folder when it exists, and every ``--entries`` DIR."""
    folders = [Path("leaderboards/entries")] if Path("leaderboards/entries").is_dir() else []
    for folder in extra or []:
        if not Path(folder).is_dir():
            raise UserError(f"{str(folder)!r} is not a folder of submitted entries", key="--entries")
        folders.append(Path(folder))
    return folders


def render(out_dir: str | Path, site_dir: str | Path | None = None, title: str | None = None,
           compare_to: str | Path | None = None, tolerance: float = 0.01,
           entries: list[str | Path] | None = None, reported: list[str | Path] | None = None) -> tuple[Path, Path, list[Change]]:
    """Write ``leaderboard.md`` into ``out_dir`` and the static site into ``site_dir``; with
    ``compare_to`` (a previous run folder) also ``changes.md``, and return its changes.
    ``reported``: folders of reported tables beside the shipped ones."""
    out_dir = Path(out_dir)
    refuse_links(out_dir, *([Path(site_dir)] if site_dir else []), key="DIR")
    rows = read_rows(out_dir / "results.jsonl")
    if not rows:
        raise UserError(f"no results in {str(out_dir / 'results.jsonl')!r}; run a suite first")
    suites = read_run_info(out_dir)
    aggregates = read_aggregates(out_dir)  # written when the run finished; computed now only if the rows changed since
    tables = main_tables(rows, aggregates.ranked, run_headline(suites))
    submitted = read_entries(entry_folders(entries))
    merge(tables, submitted)
    write_board(out_dir / "board.json", tables)  # measured and submitted values: what --compare reads
    papers = read_reported([Path(f) for f in reported or []])
    tables = add_reported(tables, papers)
    comparisons = compare_reported(rows, papers)
    changes = []
    if compare_to is not None:
        changes = compare(values(tables), previous_values(Path(compare_to)), tolerance)
        (out_dir / "changes.md").write_text(changes_markdown(changes, str(compare_to), tolerance))
    header = header_text(suites, rows)
    title = title or f"robustad-bench leaderboard — {out_dir.name}"
    md_path = out_dir / "leaderboard.md"
    md_path.write_text(render_markdown(rows, aggregates.settings, title, tables, header, comparisons))
    site = Path(site_dir) if site_dir else out_dir / "site"
    site.mkdir(parents=True, exist_ok=True)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    plots = write_reliability_diagrams(out_dir, aggregates.reliability, attack_text)
    pages = entry_pages(out_dir, site, rows, aggregates, env)
    (site / "plots").mkdir(exist_ok=True)
    for plot in plots:
        shutil.copyfile(plot, site / "plots" / plot.name)
    tag, explanation = threshold_words(rows)
    page = env.get_template("index.html.j2").render(
        title=title, settings=zip(aggregates.settings, settings_lines(aggregates.settings)),
        settings_headers=settings_headers(tag), detail=category_lines(rows), detail_headers=category_headers(tag),
        failed=[r["cell_id"] for r in rows if r.get("status") != "ok"], plots=[f"plots/{p.name}" for p in plots],
        notes=attack_notes(rows), threshold_text=explanation,
        tables=tables, threat_text=threat_text, ranking_text=ranking_text, comparisons=comparisons, suites=list(suites.values()), meta=header, pages=pages,
        changes=(out_dir / "changes.md").is_file() and compare_to is not None,
        regressions=sum(c.regression for c in changes),
        badges=sorted({c.badge for t in tables for c in t.columns if c.badge}),
    )
    (site / "index.html").write_text(page)
    (site / "howto.html").write_text(env.get_template("howto.html.j2").render())
    for name in ("style.css", "sort.js"):
        shutil.copyfile(TEMPLATES / name, site / name)
    for entry in submitted:  # the merged entries' files, linked from their rows
        (site / "submitted").mkdir(exist_ok=True)
        shutil.copyfile(entry["file"], site / "submitted" / entry["file"].name)
    for name in ("results.jsonl", "robust.jsonl", "summary.json", "leaderboard.md", "changes.md", "board.json"):  # the page links them: the site stands alone
        if (out_dir / name).is_file() and (out_dir / name).resolve() != (site / name).resolve():
            shutil.copyfile(out_dir / name, site / name)
    return md_path, site / "index.html", changes
