"""The papers' reported numbers on the board, and ``robustad-bench reproduce``."""

from __future__ import annotations

import pytest
import yaml

from robustad_bench.core.errors import UserError
from robustad_bench.harness.cli import main
from robustad_bench.harness.rows import read_rows
from robustad_bench.harness.summaries import protocol_mean
from robustad_bench.leaderboards.reported import parse_reported, read_reported


def reported_file(folder, clean: float, adversarial: float):
    """A reported table of PatchCore on the tiny suite's textures under its PGD (2 steps, 8/255)."""
    folder.mkdir(exist_ok=True)
    (folder / "paper.yaml").write_text(yaml.safe_dump({"paper": "A test paper", "tables": [{
        "table": "Table T", "task": "detection", "metric": "image_auroc",
        "protocol": {"attack": "pgd", "steps": 2, "norm": "linf", "eps": "8/255"},
        "methods": {"PatchCore": ["patchcore"]}, "rows": {"textures": [[clean, adversarial]]}}]}))
    return folder


def deltas(printed: str) -> dict[str, float]:
    """setting → Δ of each line ``reproduce`` printed."""
    found = {}
    for line in printed.splitlines():
        words = line.split()
        if len(words) > 7 and words[0] == "pc":
            found[words[4]] = float(words[-4])  # ... Δ, ok | MISS, Table T
    return found


def test_reproduce_passes_within_the_tolerance_and_exits_3_on_a_planted_miss(tiny_suite, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    rows = read_rows(out / "results.jsonl")
    clean = protocol_mean(rows, "pc", "textures", "detection", "image_auroc", None)
    attacked = protocol_mean(rows, "pc", "textures", "detection", "image_auroc", ("pgd", 2, "linf", 8 / 255))
    assert clean is not None and attacked is not None
    capsys.readouterr()

    close = reported_file(tmp_path / "close", round(100 * clean + 1.0, 1), round(100 * attacked - 1.0, 1))
    assert main(["reproduce", str(out), "--reported", str(close)]) == 0
    printed = capsys.readouterr().out
    assert deltas(printed) == pytest.approx({"clean": -1.0, "PGD-2": 1.0}, abs=0.11) and "MISS" not in printed

    missed = reported_file(tmp_path / "missed", round(100 * clean, 1), round(100 * attacked + 5.0, 1))  # 5 points off
    assert main(["reproduce", str(out), "--reported", str(missed)]) == 3
    captured = capsys.readouterr()
    assert deltas(captured.out) == pytest.approx({"clean": 0.0, "PGD-2": -5.0}, abs=0.11)
    assert "MISS" in captured.out and "beyond ±2 points" in captured.err
    assert main(["reproduce", str(out), "--reported", str(missed), "--tolerance", "6"]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(out)]) == 2  # the shipped tables only: nothing this run measured is reported
    assert "measures no method, dataset and protocol a paper reports" in capsys.readouterr().err

    # the site shows the reported row beside the measured one, in the measured table's PGD column
    assert main(["render", str(out), "--reported", str(close)]) == 0
    md = (out / "leaderboard.md").read_text()
    line = next(ln for ln in md.splitlines() if "reported (Table T)" in ln)
    assert f"{round(100 * attacked - 1.0, 1):.1f}" in line and "PatchCore" in line
    block = md.split("### textures — detection: image AUROC")[1].split("###")[0]
    header = next(ln for ln in block.splitlines() if ln.startswith("| #"))
    assert "(reported)" not in header  # the measured column of the same attack, steps and threat model holds it
    assert "## Measured vs reported" in md
    site = (out / "site" / "index.html").read_text()
    assert 'class="badge reported"' in site and "Measured vs reported" in site


def test_the_shipped_tables_are_on_the_quick_suites_site(tiny_suite, tmp_path):
    """Seed 002's Table 1 rows (every method, every dataset) as reported entries, even where
    the run measured none of those datasets."""
    out = tmp_path / "out"
    assert main(["run", str(tiny_suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    site = (out / "site" / "index.html").read_text()
    table1 = [r for r in read_reported() if r.table == "Table 1"]
    assert len(table1) == 11 * 8
    for method in {r.method for r in table1}:
        assert method in site, method
    assert "mvtec — detection: image AUROC" in site and "reported · Table 1" in site


def test_a_malformed_reported_table_names_its_key():
    good = {"table": "T", "task": "detection", "metric": "image_auroc",
            "protocol": {"attack": "pgd", "steps": 10, "norm": "linf", "eps": "8/255"}, "methods": {"A": [], "B": []},
            "rows": {"mvtec": [[90.0, 10.0], [80.0, 5.0]]}}
    assert len(parse_reported({"paper": "p", "tables": [good]}, "f.yaml")) == 2
    with pytest.raises(UserError, match=r"tables\[0\]\.rows\.mvtec"):
        parse_reported({"paper": "p", "tables": [{**good, "rows": {"mvtec": [[90.0, 10.0]]}}]}, "f.yaml")
    with pytest.raises(UserError, match=r"tables\[0\]\.metric"):
        parse_reported({"paper": "p", "tables": [{**good, "metric": "aupro"}]}, "f.yaml")
    with pytest.raises(UserError, match="norm"):
        parse_reported({"paper": "p", "tables": [{**good, "protocol": {**good["protocol"], "norm": "l1"}}]}, "f.yaml")


def test_one_row_per_method_and_table_whatever_its_attacks():
    """Seed 002's Table 4 (PatchGuard under five attacks, the paper gives no steps) is one row
    with a value in each attack's column, beside Table 1's PatchGuard row (and Table 21's, L2)."""
    from robustad_bench.leaderboards.reported import add_reported

    tables = add_reported([], read_reported())
    (table,) = [t for t in tables if (t.dataset, t.task) == ("mvtec", "detection")]
    rows = {r["citation"].split(",")[0]: r for r in table.rows if r["detector"] == "PatchGuard"}
    assert set(rows) == {"Table 1", "Table 4", "Table 21"}
    headings = {c.key: c.heading for c in table.columns}
    table4 = {headings[k]: v.mean for k, v in rows["Table 4"]["values"].items() if v.mean is not None}
    assert table4 == pytest.approx({"L∞ ε=8/255 · caa (reported)": 0.748, "L∞ ε=8/255 · autoattack (reported)": 0.708,
                                    "L∞ ε=8/255 · a3 (reported)": 0.698, "L∞ ε=8/255 · segpgd (reported)": 0.719,
                                    "L∞ ε=8/255 · sea (reported)": 0.692})
    assert rows["Table 1"]["values"]["clean"].mean == pytest.approx(0.881)
    table21 = {headings[k]: v.mean for k, v in rows["Table 21"]["values"].items() if v.mean is not None}
    assert table21 == pytest.approx({"clean": 0.881, "L2 ε=16/255 · pgd-1000 (reported)": 0.843,
                                     "L2 ε=32/255 · pgd-1000 (reported)": 0.821, "L2 ε=64/255 · pgd-1000 (reported)": 0.782,
                                     "L2 ε=128/255 · pgd-1000 (reported)": 0.772})
