"""All four detectors through the CLI on one tiny embedded category: rows, cache, leaderboard."""

from __future__ import annotations

import json
import textwrap

from robustad_bench.harness.cli import main

SUITE = """
name: seeds-tiny
seed: 0
batch_size: 8
map_size: 16
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 6, n_test_normal: 4, n_test_anomalous: 4}
detectors:
  - {name: patchcore, backbone: resnet18, input_size: 64}
  - {name: anomalydino, input_size: 56, shots: 2, masking: [brick]}
  - {name: zarnd, backbone: resnet18, input_size: 64}
  - {name: patchguard, backbone: vit_tiny_patch16_224, input_size: 64, epochs: 1, batch_size: 8, train_steps: 1, hidden_dim: 64}
attacks:
  - {name: none}
  - {name: pgd, eps: 8/255, steps: 1}
  - {name: surrogate, eps: 8/255, head_steps: 20}
  - {name: pgd, label: pgd-adaptive, eps: 8/255, steps: 1, entropy_weight: 10.0}
"""


def test_four_detectors_side_by_side(tmp_path):
    suite = tmp_path / "seeds.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["run", str(suite), "--out", str(out), "--cache", str(cache), "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["detector"] for r in rows}) == ["anomalydino", "patchcore", "patchguard", "zarnd"]
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    surrogate = [r for r in rows if r["attack"] == "surrogate"]
    assert all(r["knowledge"] == "surrogate" and r["attack_params"]["head_data"] == "labels" for r in surrogate)
    assert all(r["passes"]["gradient"] > 0 for r in surrogate)  # feature passes are counted too
    by = {(r["detector"], r["attack"]): r for r in rows}
    assert by["zarnd", "none"]["metrics"]["pixel_auroc"] is None  # no localization: AL is n/a
    assert by["patchguard", "none"]["metrics"]["pixel_auroc"] is not None
    assert by["patchguard", "none"]["weights"] == "trained from random init"
    for r in rows:  # calibration columns on every row; attack-only ones on attacked rows
        assert {"ece_raw", "ece_platt", "entropy_clean", "flag_auroc", "ece_bins"} <= set(r["metrics"])
        attacked = r["attack"] != "none"
        assert (r["metrics"]["entropy_adv"] is not None) == attacked == (r["metrics"]["flag_auroc"] is not None)
    plots = sorted(p.name for p in (out / "plots").glob("*.svg"))
    assert plots == [f"reliability_{d}_textures.svg" for d in ("anomalydino", "patchcore", "patchguard", "zarnd")]
    assert 'src="plots/reliability_zarnd_textures.svg"' in (out / "site" / "index.html").read_text()
    assert (out / "site" / "plots" / plots[0]).is_file()
    board = (out / "leaderboard.md").read_text()
    assert "ECE raw → Platt" in board and "Flag AUROC" in board
    zarnd_lines = [line for line in board.splitlines() if line.startswith("| zarnd")]
    assert zarnd_lines and all("n/a" in line for line in zarnd_lines)
    # another output folder: every cell comes from the cache (PatchGuard is not retrained), same numbers
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = [json.loads(line) for line in (tmp_path / "again" / "results.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
