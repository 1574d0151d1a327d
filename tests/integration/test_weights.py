"""Pretrained weights ahead of a run: offline, ``validate`` and ``run`` name every missing file
and the fetch command (``run`` stops there, before any compute; ``validate`` passes); with the files in the caches timm and torch read,
an offline run loads them; ``weights fetch`` downloads (from a server on 127.0.0.1 here),
records sha256, and ``--verify`` catches a changed file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from robustad_bench.harness.cli import main

SUITE = """name: pretrained
datasets:
  - {name: textures, categories: [brick], image_size: 64, crop_size: 96, n_train: 4, n_test_normal: 2, n_test_anomalous: 2}
detectors:
  - {name: patchcore, label: pc, backbone: resnet18, layers: [layer2, layer3], weights: timm, input_size: 64}
attacks:
  - {name: none}
  - {name: fgsm, eps: 8/255}
"""


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
            "ROBUSTAD_BENCH_CACHE": str(tmp_path / "cache")}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustad_bench", *args], env=env, capture_output=True, text=True, timeout=600)


def plant_hub_file(hf_home: Path) -> Path:
    """timm's resnet18 checkpoint in the hub cache's layout (blob named by its sha256, a
    snapshot link, refs/main), as ``huggingface_hub`` leaves it; weights from a seeded init."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    repo = hf_home / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    blob = tmp.rename(repo / "blobs" / digest)
    commit = "0" * 40
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / digest)
    return blob


def test_offline_a_missing_weight_is_named_by_validate_and_stops_run_then_the_cached_file_runs(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    env = offline_env(tmp_path)
    for command, rc in ((["validate", str(suite)], 0), (["run", str(suite), "--out", str(tmp_path / "o"), "--no-progress"], 2)):
        done = cli(env, *command)
        said = done.stdout + done.stderr
        assert done.returncode == rc, said  # validate names them and passes: the suite is valid, run stops
        assert "timm:resnet18 (for pc): hf:timm/resnet18.a1_in1k/model.safetensors" in said, said
        assert f"robustad-bench weights fetch {suite}" in said and "Traceback" not in said
    assert "run` will stop here" in cli(env, "validate", str(suite)).stdout
    assert not (tmp_path / "o" / "results.jsonl").exists()  # nothing was computed

    blob = plant_hub_file(tmp_path / "hf")
    assert cli(env, "validate", str(suite)).returncode == 0
    done = cli(env, "weights", "fetch", str(suite))  # already there: nothing to download, the sha256 recorded
    assert done.returncode == 0 and "already here" in done.stdout and blob.name in done.stdout, done.stdout + done.stderr
    done = cli(env, "weights", "fetch", str(suite), "--verify")
    assert done.returncode == 0 and "ok (publisher's sha256)" in done.stdout, done.stdout
    done = cli(env, "run", str(suite), "--out", str(tmp_path / "o"), "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert {r["weights"] for r in rows} == {"timm:resnet18"} and all(r["status"] == "ok" for r in rows)

    data = bytearray(blob.read_bytes())
    data[-1] ^= 1  # one flipped bit in the checkpoint
    blob.write_bytes(bytes(data))
    done = cli(env, "weights", "fetch", str(suite), "--verify")
    assert done.returncode == 2 and "MISMATCH" in done.stdout and blob.name in done.stdout, done.stdout


def test_a_cluster_run_refuses_missing_weights_even_online(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    monkeypatch.setattr("robustad_bench.harness.weights.hub_reachable", lambda: True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--backend", "slurm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nodes may have no network" in err and "timm:resnet18" in err, err


class Checkpoints(BaseHTTPRequestHandler):
    """Serves checkpoints; a HEAD answers as the Hugging Face hub does for an LFS file: a
    redirect carrying the content's sha256 in ``X-Linked-Etag``."""

    files: dict[str, bytes] = {}
    etags: dict[str, str] = {}

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/cdn")  # never followed
        if self.path in self.etags:
            self.send_header("X-Linked-Etag", f'"{self.etags[self.path]}"')
        self.end_headers()

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def checkpoint_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Checkpoints)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_weights_fetch_downloads_a_robust_checkpoint_records_its_sha256_and_verify_catches_a_change(
        tmp_path, monkeypatch, capsys, checkpoint_server):
    import io

    import timm

    torch.manual_seed(0)
    state = {f"module.model.{k}": v for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    Checkpoints.files = {"/robust/resnet18_linf_eps2.0.ckpt": buffer.getvalue(), "/robust/resnet18_linf_eps8.0.ckpt": buffer.getvalue()}
    Checkpoints.etags = {"/robust/resnet18_linf_eps2.0.ckpt": digest, "/robust/resnet18_linf_eps8.0.ckpt": "f" * 64}
    port = checkpoint_server.server_port
    monkeypatch.setattr("robustad_bench.adapters.backbones.ROBUST_IMAGENET_URL", f"http://127.0.0.1:{port}/robust/{{name}}.ckpt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    suite = tmp_path / "z.yaml"
    suite.write_text(SUITE.replace("{name: patchcore, label: pc, backbone: resnet18, layers: [layer2, layer3], weights: timm, input_size: 64}",
                                   '{name: zarnd, label: z, backbone: resnet18, weights: "robustness:resnet18_linf_eps2.0", input_size: 64}'))
    cache = tmp_path / "cache"
    assert main(["weights", "fetch", str(suite), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_linf_eps2.0.ckpt"
    assert path.read_bytes() == buffer.getvalue() and "fetched" in out and digest in out, out
    record = json.loads((cache / "weights.json").read_text())["robustness:resnet18_linf_eps2.0"]
    assert record["sha256"] == record["published_sha256"] == digest  # the publisher's digest, read from the hub's HEAD
    assert main(["weights", "fetch", str(suite), "--cache", str(cache), "--verify"]) == 0
    assert "ok (recorded sha256)" in capsys.readouterr().out
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    path.write_bytes(bytes(data))
    assert main(["weights", "fetch", str(suite), "--cache", str(cache), "--verify"]) == 2
    assert f"MISMATCH: expected {digest}" in capsys.readouterr().out

    other = tmp_path / "z8.yaml"  # a file that is not what its publisher says it is: refused at the fetch
    other.write_text(suite.read_text().replace("eps2.0", "eps8.0"))
    assert main(["weights", "fetch", str(other), "--cache", str(cache)]) == 2
    assert f"expected sha256 {'f' * 64}, got {digest}" in capsys.readouterr().err
