"""A detector admitted score-only (no input gradient: anomalib's RAD) runs every attack that
needs no gradient of it — score-only, transfer from a differentiable detector, noise — and no
other; the skipped cells are named before the run, and the board marks its rows."""

from __future__ import annotations

import json

import pytest

from robustad_bench.harness.cli import main

pytest.importorskip("anomalib")

SUITE = """name: scoreonly
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 4, n_test_normal: 2, n_test_anomalous: 2}
detectors:
  - {name: anomalib_rad, backbone: vit_tiny_patch16_224, input_size: 64, k_image: 2, label: rad}
  - {name: patchcore, backbone: resnet18, input_size: 64, label: pc}
attacks:
%s
"""
ATTACKS = """  - {name: none}
  - {name: pgd, eps: 8/255, steps: 2}
  - {name: square, eps: 8/255, steps: 4}
  - {name: noise, eps: 8/255}
  - {name: transfer, source: pc, eps: 8/255, steps: 2, label: from-pc}
  - {name: transfer, source: rad, eps: 8/255, steps: 2, label: from-rad}
  - {name: transfer, source: rad, attack: square, eps: 8/255, steps: 4, label: square-from-rad}"""


def test_a_score_only_detector_gets_only_the_attacks_that_need_no_gradient_and_is_flagged(tmp_path, caplog):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE % ATTACKS)
    assert main(["validate", str(path)]) == 0
    assert "'rad' is score-only" in caplog.text and "pgd" in caplog.text and "from-rad" in caplog.text, caplog.text
    out = tmp_path / "o"
    assert main(["run", str(path), "--out", str(out), "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ran = {(r["detector"], r["attack_label"]) for r in rows}
    assert {a for d, a in ran if d == "rad"} == {"none", "square", "noise", "from-pc"}  # no gradient of rad is asked for
    assert {a for d, a in ran if d == "pc"} == {"none", "pgd", "square", "noise", "square-from-rad"}
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    for r in rows:
        assert r["score_only"] == (r["detector"] == "rad")
        assert ("score-only" in r["flags"]) == (r["detector"] == "rad" and r["attack"] != "none"), r
    board = (out / "leaderboard.md").read_text()
    assert "**rad**: it has no input gradient" in board, board
    ranked = [line.split("|")[2].strip() for line in board.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert ranked[:2] == ["pc", "rad ⚠"], ranked  # after the entry the gradient attacks evaluated, whatever its numbers


def test_a_suite_with_only_gradient_attacks_on_a_score_only_detector_is_an_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text((SUITE % "  - {name: pgd, eps: 8/255, steps: 2}").replace(
        "  - {name: patchcore, backbone: resnet18, input_size: 64, label: pc}\n", ""))
    assert main(["validate", str(path)]) == 2
    assert "0 cells" in capsys.readouterr().err
