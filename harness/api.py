"""``robustad_bench.evaluate``: one's own model through the benchmark, from Python.

Any ``torch.nn.Module`` that scores images in [0, 1] — returning a score (B,), a
(score, map) pair, or an ``AnomalyOutput`` — runs through the same cells, cache, metrics
and validity flags as the CLI, without registering anything: it is wrapped and registered
under a name derived from its class and its weights for the run, then removed. A module
with a ``fit(normal_images, *, seed=...)`` method is fitted on the normal train images.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robustad_bench.adapters import DETECTORS, AnomalyOutput, Detector

from .datasets import DATASETS, Dataset, Split
from .errors import UserError
from .results import read_rows
from .suite import parse_suite


def state_digest(module: nn.Module) -> str:
    """The module's class and every tensor of its state: what its numbers depend on."""
    import hashlib

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ModuleDetector(Detector):
    """A plain module behind the detector contract."""

    name = "module"
    version = "1"
    weights = "user module"

    def __init__(self, module: nn.Module, input_size: int, localization: bool):
        super().__init__()
        self.module, self.input_size, self.localization = module, input_size, localization

    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        if hasattr(self.module, "fit"):
            self.module.fit(normal_images, seed=seed)

    def forward(self, x: Tensor) -> AnomalyOutput:
        out = self.module(x)
        if isinstance(out, AnomalyOutput):
            return out
        if isinstance(out, (tuple, list)):
            return AnomalyOutput(out[0], out[1])
        return AnomalyOutput(out, out[:, None, None].expand(-1, x.shape[-2], x.shape[-1]))

    def features(self, x: Tensor) -> Tensor:
        return self.module.features(x) if hasattr(self.module, "features") else x


class TensorData(Dataset):
    """Tensors as one category: (train, test, labels[, masks])."""

    name = "tensors"
    version = "1"

    def __init__(self, split: Split):
        self.split, self.categories, self.has_masks = split, ["tensors"], split.masks is not None

    def fingerprint(self, category: str, *, seed: int) -> str:
        import hashlib

        s, h = self.split, hashlib.sha256()
        for part in [s.train, s.test, torch.from_numpy(np.asarray(s.labels))] + ([s.masks] if s.masks is not None else []):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        return self.split


def prebuilt(obj: Any) -> type:
    """A class the registry can hold whose construction (no arguments) returns ``obj``, with
    the class attributes the harness reads (``version``, ``has_masks``)."""
    def new(cls):
        return obj

    return type(f"Prebuilt{type(obj).__name__}", (), {"__new__": new, "version": obj.version,
                                                       "has_masks": getattr(obj, "has_masks", True)})


def as_split(data: tuple) -> Split:
    if len(data) not in (3, 4):
        raise UserError("data as tensors is (train, test, labels) or (train, test, labels, masks)", key="data")
    train, test, labels, *masks = data
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(int)
    return Split(train.float(), test.float(), labels, masks[0].float() if masks else None,
                 [f"{'bad' if y else 'good'}/{i:05d}" for i, y in enumerate(labels)])


def evaluate(detector: nn.Module, data: dict | tuple, attacks: list[dict], *, out: str | Path | None = None,
             device: str = "auto", seed: int = 0, input_size: int | None = None, batch_size: int = 16,
             cache: str | Path | None = None, label: str | None = None):
    """Run ``detector`` on ``data`` under ``attacks`` (suite-style entries, e.g.
    ``[{"name": "none"}, {"name": "pgd", "eps": "8/255", "steps": 10}]``); returns one
    pandas row per cell with its metrics as columns (and writes ``out`` when given)."""
    import pandas as pd

    from .cli import default_cache
    from .runner import run_suite

    split = as_split(data) if isinstance(data, tuple) else None
    size = input_size or getattr(detector, "input_size", None) or (split.test.shape[-1] if split is not None else None)
    if size is None:
        raise UserError("give input_size= (the module has no input_size attribute)", key="input_size")
    with torch.no_grad():
        probe = detector.eval()(torch.zeros(1, 3, size, size))
    localization = isinstance(probe, (tuple, list, AnomalyOutput))
    wrapped = ModuleDetector(detector, size, localization) if not isinstance(detector, Detector) else detector
    det_name = f"api-{state_digest(detector)}"
    names = {DETECTORS: det_name}
    dataset_entry = dict(data) if isinstance(data, dict) else {"name": "api-tensors"}
    if split is not None:
        names[DATASETS] = dataset_entry["name"]
    for registry, name in names.items():  # registered for this run only: the registry builds each by calling it
        if name in registry:
            registry.unregister(name)
    DETECTORS.register(det_name)(prebuilt(wrapped))
    if split is not None:
        DATASETS.register(dataset_entry["name"])(prebuilt(TensorData(split)))
    raw: dict[str, Any] = {"name": "evaluate", "seed": seed, "batch_size": batch_size, "datasets": [dataset_entry],
                           "detectors": [{"name": det_name, "label": label or type(detector).__name__}], "attacks": attacks}
    try:
        suite = parse_suite(raw, file="<evaluate>")
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="robustad-evaluate-"))
        run_suite(suite, out_dir=folder, cache_dir=cache or default_cache(), device=device, progress=False)
        rows = read_rows(folder / "results.jsonl")
    finally:
        for registry, name in names.items():
            registry.unregister(name)
    return pd.DataFrame([{k: v for k, v in r.items() if k != "metrics"} | (r.get("metrics") or {}) for r in rows])
