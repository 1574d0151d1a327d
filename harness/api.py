"""``robustad_bench.evaluate``: one's own model through the benchmark, from Python.

Any ``torch.nn.Module`` that scores images in [0, 1] — returning a score (B,), a
(score, map) pair, or an ``AnomalyOutput`` — runs through the same cells, cache, metrics
and validity flags as the CLI, without registering anything: it is wrapped and registered
under a name derived from its class and its weights for the run, then removed. A module
with a ``fit(normal_images, *, seed=...)`` method is fitted on the normal train images.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robustad_bench.adapters import DETECTORS, AnomalyOutput, Detector
from robustad_bench.core.errors import UserError

from .datasets import DATASETS, Dataset, Split
from .rows import read_rows
from .suite import parse_suite


def state_digest(module: nn.Module) -> str:
    """The module's class, every tensor of its state and every plain attribute of it and its
    submodules (a threshold, a top-k, a flag): what its numbers depend on."""
    import hashlib

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(plain_attributes(module), sort_keys=True).encode())
    return h.hexdigest()[:16]


def plain_attributes(module: nn.Module) -> dict[str, Any]:
    """``submodule.attribute`` → value for every JSON-representable public attribute that is
    not the module machinery (parameters, buffers and submodules are in the state)."""
    found = {}
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key.startswith("_") or key == "training":
                continue
            try:
                found[f"{prefix}.{key}"] = json.loads(json.dumps(value))
            except (TypeError, ValueError):
                continue  # tensors, modules, callables: not plain values
    return found


class ModuleDetector(Detector):
    """A plain module behind the detector contract."""

    name = "module"
    version = "1"
    weights = "user module"

    def __init__(self, module: nn.Module, input_size: int):
        super().__init__()
        self.module, self.input_size = module, input_size
        self.returns_map: bool | None = None  # known from the first output, which comes after fitting

    @property
    def localization(self) -> bool:
        """Whether the module returns a map; asked after fitting (or restoring a fit)."""
        if self.returns_map is None:
            device = next((t.device for t in self.module.state_dict().values()), torch.device("cpu"))
            with torch.no_grad():
                self(torch.zeros(1, 3, self.input_size, self.input_size, device=device))
        return bool(self.returns_map)

    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        if hasattr(self.module, "fit"):
            self.module.fit(normal_images, seed=seed)

    def forward(self, x: Tensor) -> AnomalyOutput:
        out = self.module(x)
        self.returns_map = not isinstance(out, Tensor)
        if isinstance(out, AnomalyOutput):
            return out
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return AnomalyOutput(out[0], out[1])
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            raise UserError(f"{type(self.module).__name__} returned {describe_output(out)} for {x.shape[0]} images; "
                            "allowed: a score tensor (B,), a (score, map) pair or an AnomalyOutput", key="detector")
        return AnomalyOutput(out, out[:, None, None].expand(-1, x.shape[-2], x.shape[-1]))

    def features(self, x: Tensor) -> Tensor:
        return self.module.features(x) if hasattr(self.module, "features") else x


def describe_output(out: Any) -> str:
    return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"


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


def as_tensor(value: Any, key: str) -> Tensor:
    """A torch tensor from a tensor, a numpy array or a list of numbers."""
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise UserError(f"holds {value.dtype} values; allowed: numbers", key=f"data.{key}")
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise UserError(f"is a {type(value).__name__}; allowed: a torch tensor, a numpy array or a list of numbers",
                        key=f"data.{key}")
    return value


def check_images(images: Any, key: str) -> Tensor:
    """(N, 3, H, W) float images in [0, 1], finite — or a ``UserError`` saying what they are."""
    images = as_tensor(images, key)
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise UserError(f"has shape {tuple(images.shape)}; allowed: (N, 3, H, W) with N ≥ 1 (a gray image: repeat it "
                        "to 3 channels)", key=f"data.{key}")
    if not images.is_floating_point():
        raise UserError(f"is {images.dtype}; allowed: float images in [0, 1] (uint8: divide by 255)", key=f"data.{key}")
    if not bool(torch.isfinite(images).all()):
        raise UserError("holds NaN or infinite values; allowed: finite values in [0, 1]", key=f"data.{key}")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise UserError(f"ranges over [{low:g}, {high:g}]; allowed: [0, 1] (0..255 images: divide by 255)", key=f"data.{key}")
    return images.float()


def as_split(data: tuple) -> Split:
    """(train, test, labels[, masks]) checked: images in [0, 1], labels 0/1 for every test
    image, masks (M, H, W) of the test images' size with values in {0, 1}."""
    if len(data) not in (3, 4):
        raise UserError("data as tensors is (train, test, labels) or (train, test, labels, masks)", key="data")
    train, test, labels, *masks = data
    train, test = check_images(train, "train"), check_images(test, "test")
    if train.shape[-2:] != test.shape[-2:]:
        raise UserError(f"train images are {tuple(train.shape[-2:])} but test images {tuple(test.shape[-2:])}; give one size",
                        key="data")
    labels = as_tensor(labels, "labels")
    if labels.shape != (test.shape[0],) or labels.is_complex() or not bool(((labels == 0) | (labels == 1)).all()):
        raise UserError(f"has shape {tuple(labels.shape)} with values {sorted(set(labels.flatten().tolist()))[:5]}; allowed: "
                        f"({test.shape[0]},) values 0 (normal) or 1 (anomalous), one per test image", key="data.labels")
    labels = labels.cpu().numpy().astype(int)
    mask = None
    if masks:
        mask = as_tensor(masks[0], "masks").float()
        if mask.shape != (test.shape[0], *test.shape[-2:]) or not bool(((mask == 0) | (mask == 1)).all()):
            raise UserError(f"has shape {tuple(mask.shape)}; allowed: {(test.shape[0], *test.shape[-2:])} with values 0 or 1",
                            key="data.masks")
    return Split(train, test, labels, mask, [f"{'bad' if y else 'good'}/{i:05d}" for i, y in enumerate(labels)])


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
    if not isinstance(detector, nn.Module):
        raise UserError(f"is a {type(detector).__name__}; allowed: a torch.nn.Module", key="detector")
    # not called before it is fitted (a memory bank is empty until then): its outputs are checked as the run scores them
    wrapped = ModuleDetector(detector, size) if not isinstance(detector, Detector) else detector
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
    if failed := [r for r in rows if r.get("status") != "ok"]:
        raise UserError(f"{len(failed)} of {len(rows)} cells failed; the first: {failed[0].get('cell_id')}: {failed[0].get('error')}",
                        key="detector")
    return pd.DataFrame([{k: v for k, v in r.items() if k != "metrics"} | (r.get("metrics") or {}) for r in rows])
