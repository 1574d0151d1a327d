"""A wrapper that fits from another entry (``smoothed``'s base) adopts that entry's fit: the
plain PatchGuard and its two smoothed entries train once per category, and every number is
the one the wrappers' own fits give (a run that refits each gets identical rows and arrays)."""

from __future__ import annotations

import json

import numpy as np

from robustad_bench.adapters.patchguard import PatchGuard
from robustad_bench.adapters.smoothed import Smoothed
from robustad_bench.harness.cli import main

BASE = ("{name: patchguard, backbone: vit_tiny_patch16_224, weights: random, input_size: 32, feature_layer: 1, "
        "hidden_dim: 32, epochs: 1, batch_size: 8, train_steps: 1, train_eps: 8/255}")
SUITE = f"""name: shared-fit
batch_size: 4
datasets:
  - {{name: textures, categories: [brick, grass], image_size: 32, crop_size: 64, n_train: 4, n_test_normal: 3, n_test_anomalous: 3}}
detectors:
  - {{name: patchguard, label: plain, backbone: vit_tiny_patch16_224, weights: random, input_size: 32, feature_layer: 1,
     hidden_dim: 32, epochs: 1, batch_size: 8, train_steps: 1, train_eps: 8/255}}
  - {{name: smoothed, label: s025, sigma: 0.25, n: 8, base: {BASE}}}
  - {{name: smoothed, label: s05, sigma: 0.5, n: 8, base: {BASE}}}
attacks:
  - {{name: none}}
  - {{name: certify, eps: [0.25], alpha: 0.01}}
"""


FIT = PatchGuard.fit


def run(tmp_path, name, monkeypatch, calls):
    def counted(self, *args, **kwargs):
        calls.append(name)
        return FIT(self, *args, **kwargs)

    monkeypatch.setattr(PatchGuard, "fit", counted)
    (tmp_path / "s.yaml").write_text(SUITE)
    out = tmp_path / name
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--cache", str(tmp_path / f"cache-{name}"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, rows


def test_smoothed_entries_adopt_the_plain_entrys_fit_and_change_no_number(tmp_path, monkeypatch, capsys):
    calls: list[str] = []
    shared, rows = run(tmp_path, "shared", monkeypatch, calls)
    assert len(calls) == 2  # one training per category, for the plain entry and both σ
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "10 cells, 6 fit tasks (2 trained, 4 adopt a shared base's fit)"
    monkeypatch.setattr(Smoothed, "fits_from", classmethod(lambda cls, **_: None))  # each wrapper fits its own base
    separate, again = run(tmp_path, "separate", monkeypatch, calls)
    assert len(calls) == 2 + 6
    assert len(rows) == len(again) == 2 * (1 + 2 * 2)
    for row, other in zip(rows, again):
        assert row["cell_id"] == other["cell_id"] and row["metrics"] == other["metrics"], row["cell_id"]
        a, b = np.load(shared / "cells" / row["cell_id"] / "scores.npz"), np.load(separate / "cells" / row["cell_id"] / "scores.npz")
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files), row["cell_id"]
