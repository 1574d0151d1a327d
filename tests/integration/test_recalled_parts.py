"""AutoAttack-AD takes the parts that other cells of its fit group run (APGD and
Square at the same ε, steps and objective) instead of running them again, and no number
changes: every row's metrics and arrays equal a run that runs every part itself."""

from __future__ import annotations

import json

import numpy as np

from robustad_bench.harness import runner
from robustad_bench.harness.attacks.recall import Recall
from robustad_bench.harness.cli import main

SUITE = """name: recalled
batch_size: 3
datasets:
  - {name: textures, categories: [brick], image_size: 32, crop_size: 64, n_train: 4, n_test_normal: 3, n_test_anomalous: 4}
detectors:
  - {name: patchcore, backbone: resnet18, input_size: 32}
attacks:  # aa-al listed first: it runs after the APGD cell it takes a part from
  - {name: autoattack, label: aa-al, eps: [8/255], steps: 3, queries: 12, parts: apgd+pgd, objective: localization, bpda: true}
  - {name: apgd, eps: [2/255, 8/255], steps: 3, objective: [detection, localization], bpda: true}
  - {name: square, eps: [2/255, 8/255], steps: 12}
  - {name: autoattack, eps: [2/255, 8/255], steps: 3, queries: 12, parts: apgd+square+pgd, bpda: true}  # square takes no gradient: BPDA or not, the same call
"""


def run(tmp_path, name):
    (tmp_path / "s.yaml").write_text(SUITE)
    out = tmp_path / name
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--cache", str(tmp_path / f"cache-{name}"), "--no-progress"]) == 0
    rows = sorted((json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()), key=lambda r: r["cell_id"])
    return out, rows


def test_autoattack_takes_the_groups_apgd_and_square_images_and_changes_no_number(tmp_path, monkeypatch, capsys):
    shared, rows = run(tmp_path, "shared")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--dry-run", "--estimate", "--device", "cpu", "--cache", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out  # the projection charges them only what they run
    assert "autoattack (takes apgd+square)" in out and "aa-al (takes apgd)" in out
    monkeypatch.setattr(runner, "group_recall", lambda tasks: Recall())  # every part runs itself
    separate, again = run(tmp_path, "separate")
    assert [r["cell_id"] for r in rows] == [r["cell_id"] for r in again] and len(rows) == 4 + 2 + 2 + 1
    for row, other in zip(rows, again):
        assert row["status"] == other["status"] == "ok", row.get("error")
        assert row["metrics"] == other["metrics"], row["cell_id"]
        a, b = np.load(shared / "cells" / row["cell_id"] / "scores.npz"), np.load(separate / "cells" / row["cell_id"] / "scores.npz")
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files), row["cell_id"]
        assert other["recalled"] is None
        if row["attack_label"] == "autoattack":  # APGD and Square came from their cells; PGD ran
            assert row["recalled"] == {"apgd": 7, "square": 7}, row["cell_id"]
            assert row["passes"]["gradient"] < other["passes"]["gradient"]
            assert row["passes"]["forward"] < other["passes"]["forward"]
        elif row["attack_label"] == "aa-al":  # the localization APGD cell at 8/255 is its part
            assert row["recalled"] == {"apgd": 7}, row["cell_id"]
        else:
            assert row["recalled"] is None and row["passes"] == other["passes"], row["cell_id"]
    # the attacked scores did change under each attack: the comparison above compares something
    for row in rows:
        assert not np.array_equal(np.load(shared / "cells" / row["cell_id"] / "scores.npz")["scores"],
                                  np.load(shared / "cells" / row["cell_id"] / "scores.npz")["clean_scores"]), row["cell_id"]
