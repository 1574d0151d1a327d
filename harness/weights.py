"""The pretrained weights a suite needs: where each one lives, whether it is there, fetching
and verifying it (``robustad-bench weights fetch``), and the check ``validate`` and ``run``
make before any compute.

A weight is what a detector entry's weights key names (``Detector.weights_needed``):
- ``timm:<architecture>``: the checkpoint timm loads for ``pretrained=True``, from the
  Hugging Face hub (``model.safetensors``, else ``pytorch_model.bin``, in ``$HF_HOME/hub``) or
  from its URL (``$TORCH_HOME/hub/checkpoints``), as timm resolves it;
- ``robustness:<name>``: an adversarially trained ImageNet ResNet of the robustness library
  (ZARND's), in ``$TORCH_HOME/hub/checkpoints``;
- a path: a local checkpoint (``validate`` already checks that it exists).

Each file's sha256 is recorded in ``<cache>/weights.json`` when it is fetched. A file from the
hub is stored under its LFS object id, which is the publisher's sha256: that one is checked
against it; the others against the recorded digest (``weights fetch --verify``).

Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable) and for every cluster backend (whose
nodes may have no network), a missing weight stops ``run`` before any compute, naming each file
and the command that fetches it; ``validate`` names the same files and that ``run`` will stop,
and passes (like data that is not here yet, weights are deferred: the suite itself is valid).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from robustad_bench.core.errors import UserError
from robustad_bench.core.files import atomic_write_bytes, file_sha256

from .suite import Suite

HUB_HOST = "huggingface.co"
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm asks the hub for, in its order


@dataclass(frozen=True)
class Weight:
    spec: str  # timm:<arch> | robustness:<name> | a checkpoint path
    source: str  # where it comes from: hf:<repo>/<file>, a URL, or the path
    path: Path | None  # where it is on this machine; None: not there
    published_sha256: str | None = None  # the publisher's digest where the cache layout carries it
    home: str = ""  # where it goes on this machine when fetched

    @property
    def present(self) -> bool:
        return self.path is not None and self.path.is_file()


def needed(suite: Suite) -> dict[str, list[str]]:
    """weight spec → the labels of the detector entries that load it, in suite order."""
    from robustad_bench.adapters import DETECTORS

    found: dict[str, list[str]] = {}
    for entry in suite.detectors:
        cls = DETECTORS.get(entry.name)
        for spec in cls.weights_needed(**entry.kwargs) if hasattr(cls, "weights_needed") else []:
            found.setdefault(spec, []).append(entry.label)
    return found


def locate(spec: str) -> Weight:
    if spec.startswith("timm:"):
        return locate_timm(spec.removeprefix("timm:"))
    if spec.startswith("robustness:"):
        import torch

        from robustad_bench.adapters.backbones import ROBUST_IMAGENET_URL

        name = spec.removeprefix("robustness:")
        path = Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.ckpt"
        return Weight(spec, ROBUST_IMAGENET_URL.format(name=name), path if path.is_file() else None, home=str(path))
    path = Path(spec).expanduser()
    return Weight(spec, str(path), path if path.is_file() else None, home=str(path))


def locate_timm(architecture: str) -> Weight:
    """Where timm's ``pretrained=True`` reads ``architecture``'s weights, and whether they are there."""
    import importlib.util

    import torch
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"timm publishes no pretrained weights for {architecture!r}", key="weights")
    if cfg.hf_hub_id and importlib.util.find_spec("huggingface_hub") is not None:  # timm prefers the hub then
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
        home = str(Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}")
        for name in names:
            hit = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(hit, str):
                blob = Path(hit).resolve()
                oid = blob.name if re.fullmatch(r"[0-9a-f]{64}", blob.name) else None
                return Weight(f"timm:{architecture}", f"hf:{repo}/{name}", Path(hit), oid, home)
        return Weight(f"timm:{architecture}", f"hf:{repo}/{names[0]}", None, home=home)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    return Weight(f"timm:{architecture}", cfg.url, path if path.is_file() else None, home=str(path))


def fetch(spec: str) -> Weight:
    """Download ``spec`` into its cache (as the detectors load it), then locate it."""
    if spec.startswith("timm:"):
        from robustad_bench.adapters.backbones import create_backbone

        create_backbone(spec.removeprefix("timm:"), "timm")
    elif spec.startswith("robustness:"):
        from robustad_bench.adapters.backbones import robust_checkpoint
        from robustad_bench.core.download import published_sha256

        target = locate(spec)
        record = Path(target.home).with_name(Path(target.home).name + ".sha256")
        published = published_sha256(target.source)
        if published and not target.present:  # the publisher's digest, read before the download: the file must match it
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(published + "\n")
        robust_checkpoint(spec.removeprefix("robustness:"))  # checks the file against that record (or records it)
        weight = locate(spec)
        return Weight(weight.spec, weight.source, weight.path, published, weight.home)
    weight = locate(spec)
    if not weight.present:
        raise UserError(f"{spec}: fetched, yet not found where it is read from ({weight.source})", key="weights")
    return weight


def hub_reachable(timeout: float = 3.0) -> bool:
    """False with ``HF_HUB_OFFLINE`` set, or when the hub does not answer a TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def missing(suite: Suite) -> list[tuple[Weight, list[str]]]:
    return [(w, labels) for spec, labels in needed(suite).items() if not (w := locate(spec)).present]


def check_weights(suite: Suite, *, strict: bool, defer: bool = False) -> list[str]:
    """Raise a UserError naming every missing weight when ``strict`` (a cluster backend) or
    offline; else return notes (timm fetches them at first use). ``defer`` (validate): offline,
    return notes saying that ``run`` will stop, instead of raising."""
    absent = missing(suite)
    if not absent:
        return []
    fetch_command = f"robustad-bench weights fetch {suite.file or 'SUITE'}"
    lines = [f"{w.spec} (for {', '.join(labels)}): {w.source} → {w.home}" for w, labels in absent]
    offline = not hub_reachable()
    if defer and offline:
        return [f"weights {line}: missing and offline, so `run` will stop here; fetch first: {fetch_command}"
                for line in lines]
    if strict or offline:
        why = "the cluster's nodes may have no network" if strict else \
            "offline: HF_HUB_OFFLINE is set or the model hub is unreachable"
        raise UserError(f"{len(absent)} pretrained weight file(s) missing ({why}):\n  " + "\n  ".join(lines) +
                        f"\nfetch them first, on a machine with internet: {fetch_command} "
                        "(then share $HF_HOME and $TORCH_HOME with this one)", file=suite.file, key="detectors")
    return [f"weights {line}: not here yet, fetched at first use (prefetch: {fetch_command})" for line in lines]


def verify(found: Weight, record: dict) -> tuple[str, str]:
    """(status, sha256) of one located weight against the publisher's digest, else the recorded one."""
    if not found.present:
        return "MISSING", ""
    digest = file_sha256(found.path)
    expected = found.published_sha256 or record.get("sha256")
    if expected is None:
        return "no digest recorded (fetch it with weights fetch)", digest
    if digest != expected:
        return f"MISMATCH: expected {expected}", digest
    return "ok (publisher's sha256)" if found.published_sha256 else "ok (recorded sha256)", digest


def manifest_path(cache: Path) -> Path:
    return cache / "weights.json"


def read_manifest(cache: Path) -> dict[str, dict]:
    path = manifest_path(cache)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        raise UserError(f"{str(path)!r} is not readable JSON ({err}); delete it and fetch again", key="--cache") from err


def record(cache: Path, weight: Weight, sha256: str) -> None:
    table = read_manifest(cache)
    table[weight.spec] = {"file": str(weight.path), "source": weight.source, "sha256": sha256,
                          "published_sha256": weight.published_sha256}
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(manifest_path(cache), json.dumps(table, indent=1, sort_keys=True).encode())
