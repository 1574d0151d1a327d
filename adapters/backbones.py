"""timm backbones with explicit weight provenance: ``random | timm | robustness:NAME | PATH``.

``random`` builds a randomly initialised network (labelled ``random`` on the leaderboard);
``timm`` asks timm for its pretrained weights (needs the model hub, so it fails offline
with a message naming the file to provide); ``robustness:resnet18_linf_eps2.0`` downloads
an adversarially trained ImageNet ResNet (ZARND's backbones); any other value is a local
checkpoint path.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import torch
from torch import nn

from robustad_bench.core.errors import UserError

log = logging.getLogger(__name__)


def check_backbone(backbone: str) -> str | None:
    """Return a problem message for an unknown timm architecture, else None."""
    import timm  # imported on use: timm pulls in torchvision, seconds a cached rerun should not pay

    if timm.is_model(backbone):
        return None
    close = difflib.get_close_matches(backbone, timm.list_models(), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown timm backbone {backbone!r}.{hint} See timm.list_models() for the choices."


def backbone_problems(kwargs: dict, backbone_key: str = "backbone", weights_key: str = "weights") -> list[str]:
    """``check_backbone`` and ``check_weights`` on the keys of a detector's YAML entry."""
    problems = []
    if backbone_key in kwargs and (p := check_backbone(kwargs[backbone_key])):
        problems.append(p)
    if weights_key in kwargs and (p := check_weights(kwargs[weights_key])):
        problems.append(p)
    return problems


# Adversarially trained ImageNet models of the robustness library (Salman et al. 2020), as
# the ZARND code downloads them: ``weights: robustness:resnet18_linf_eps2.0``.
ROBUST_IMAGENET_URL = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main/{name}.ckpt"
ROBUST_IMAGENET = tuple(
    f"{arch}_linf_eps{eps}" for arch in ("resnet18", "resnet50", "wide_resnet50_2") for eps in ("0.5", "1.0", "2.0", "4.0", "8.0")
)


def check_weights(weights: str) -> str | None:
    if weights in ("random", "timm") or Path(weights).expanduser().is_file():
        return None
    if weights.startswith("robustness:"):
        name = weights.removeprefix("robustness:")
        if name in ROBUST_IMAGENET:
            return None
        close = difflib.get_close_matches(name, ROBUST_IMAGENET, n=1)
        hint = f" Did you mean 'robustness:{close[0]}'?" if close else ""
        return f"unknown robust ImageNet model {name!r}.{hint} Allowed: {', '.join(ROBUST_IMAGENET)}"
    return (
        "weights must be 'random', 'timm', 'robustness:<arch>_linf_eps<ε>' or the path of an existing "
        f"checkpoint, got {weights!r}"
    )


# sha256 of the published files, pinned where they could be read; the rest are recorded on
# first download (``<file>.sha256`` beside it) and checked at every later use.
ROBUST_IMAGENET_SHA256: dict[str, str] = {}


def verified(path: Path, name: str) -> Path:
    """``path`` if its sha256 is the pinned or recorded one; records it when there is neither."""
    from robustad_bench.core.files import file_sha256

    actual, record = file_sha256(path), path.with_name(path.name + ".sha256")
    expected = ROBUST_IMAGENET_SHA256.get(name) or (record.read_text().strip() if record.is_file() else None)
    if expected is None:
        log.warning("%s: no pinned sha256 for %s; recording %s (checked at every later use)", path, name, actual)
        record.write_text(actual + "\n")
    elif actual != expected:
        raise UserError(f"checkpoint {str(path)!r} does not match: expected sha256 {expected}, got {actual}. "
                        "Delete it to download it again.", key="weights")
    return path


def robust_checkpoint(name: str) -> Path:
    """Local path of a robustness-library ImageNet checkpoint, downloaded once into torch's hub
    cache (``$TORCH_HOME/hub/checkpoints``) and checked against its sha256; offline, an error
    names the URL and the file."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.ckpt"
    if path.is_file():
        return verified(path, name)
    url = ROBUST_IMAGENET_URL.format(name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)  # writes a temp file, then renames
    except Exception as err:
        raise UserError(
            f"could not download {url} ({err.__class__.__name__}: {err}). Download it on a machine with "
            f"internet and put it at {str(path)!r}, or pass its path as `weights:`.",
            key="weights",
        ) from err
    return verified(path, name)


def create_backbone(backbone: str, weights: str, **timm_kwargs) -> tuple[nn.Module, str]:
    """A timm model built with ``timm_kwargs``, and its weight provenance string.

    ``weights``: ``random`` (random init), ``timm`` (the hub's pretrained weights) or the
    path of a local checkpoint (timm, torchvision or robustness-library layout).
    """
    import timm  # imported on use: timm pulls in torchvision, seconds a cached rerun should not pay

    problem = check_backbone(backbone)
    if problem:
        raise UserError(problem, key="backbone")
    if weights == "random":
        return timm.create_model(backbone, pretrained=False, **timm_kwargs).eval(), "random"
    if weights == "timm":
        try:
            model = timm.create_model(backbone, pretrained=True, **timm_kwargs)
        except Exception as err:  # hub unreachable, missing weights, ...
            cfg = timm.models.get_pretrained_cfg(backbone)
            source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "the timm hub"
            raise UserError(
                f"could not fetch pretrained weights for {backbone!r} from {source} ({err.__class__.__name__}: "
                f"{err}). Download the checkpoint on a machine with internet and pass "
                f"`weights: /path/to/{backbone}.safetensors` (or .pth) instead.",
                key="weights",
            ) from err
        return model.eval(), f"timm:{backbone}"
    model = timm.create_model(backbone, pretrained=False, **timm_kwargs)
    if weights.startswith("robustness:"):
        load_checkpoint(model, robust_checkpoint(weights.removeprefix("robustness:")))
        return model.eval(), weights
    load_checkpoint(model, Path(weights).expanduser())
    return model.eval(), str(weights)


def feature_layers(backbone: str, device: str = "meta") -> list[str]:
    """The feature layers timm's ``features_only`` offers for ``backbone``, from a probe model
    (on the meta device by default: no memory, no random draws)."""
    import timm

    with torch.device(device):
        return timm.create_model(backbone, pretrained=False, features_only=True).feature_info.module_name()


def layer_problem(backbone: str, layers: list[str], device: str = "meta") -> str | None:
    available = feature_layers(backbone, device)
    unknown = [layer for layer in layers if layer not in available]
    return f"backbone {backbone!r} has no feature layer(s) {unknown}; allowed: {available}" if unknown else None


def create_feature_backbone(backbone: str, layers: list[str], weights: str) -> tuple[nn.Module, str]:
    """A timm ``features_only`` network returning ``layers``; and its provenance string."""

    # the probe is built on the CPU, as it always was: its random init draws from the seeded
    # generator before the backbone's, so random-init weights stay what earlier versions made
    problem = check_backbone(backbone) or layer_problem(backbone, layers, device="cpu")
    if problem:
        raise UserError(problem, key="layers")
    out_indices = tuple(feature_layers(backbone).index(layer) for layer in layers)
    return create_backbone(backbone, weights, features_only=True, out_indices=out_indices)


def from_robustness_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a robustness-library checkpoint (``model.*``, ``attacker.model.*``, ``normalizer.*``
    after the ``module.`` prefix is gone) onto plain torchvision/timm ResNet names.

    The library saves the network twice (``model.`` and ``attacker.model.``) plus its input
    normaliser; the ``model.`` copy is the one it evaluates. Other layouts pass through.
    """
    if not any(k.startswith("attacker.") or k.startswith("normalizer.") for k in state):
        return state
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (.safetensors or torch pickle), unwrapping common containers."""
    if not path.is_file():
        raise UserError(f"checkpoint file {str(path)!r} does not exist", key="weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read checkpoint {str(path)!r}: {err}", key="weights") from err
    for container in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(path)!r} holds no state dict", key="weights")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return from_robustness_layout(state)


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load ``path`` into a (possibly truncated) network; missing keys or wrong shapes are errors."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(
            f"checkpoint {str(path)!r} does not match the backbone: {len(missing)} missing key(s), "
            f"e.g. {missing[:3]}",
            key="weights",
        )
    bad_shape = [k for k in own if state[k].shape != own[k].shape]
    if bad_shape:
        raise UserError(
            f"checkpoint {str(path)!r} has wrong shapes for {bad_shape[:3]}", key="weights"
        )
    model.load_state_dict({k: state[k] for k in own})
    log.info("loaded %d tensors from %s (%d unused)", len(own), path, len(state) - len(own))
