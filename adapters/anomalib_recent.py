"""anomalib's recent image models behind our detector contract: Patchflow and GeneralAD
(white-box) and RAD (admitted score-only). The shared machinery is ``anomalib_models``.

What was done, per model (clean scores equal anomalib's own inference: ``tests/unit/adapters``):
- ``anomalib_patchflow``, ``anomalib_general_ad`` (trained like STFPM: their own
  ``training_step`` and ``configure_optimizers``): their forward extracts the frozen features
  under an explicit ``with torch.no_grad()``. Ours runs anomalib's forward unchanged, with that
  ``torch.no_grad`` made inert for the call (``no_grad_inert``: the module's ``torch`` seen with
  ``no_grad`` a no-op; autograd never changes a value) and the extractor's ``requires_grad`` flag set.
- ``anomalib_rad`` (training-free retrieval): its position-aware patch matching writes with
  ``torch.maximum(..., out=...)``, which autograd refuses, after a top-k image retrieval; no flag
  restores a gradient without changing anomalib. Admitted score-only (``differentiable = False``):
  the harness runs score-only, transfer and noise attacks on it, and the board flags its rows.
"""

from __future__ import annotations

import importlib
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Literal

import torch
from torch import Tensor

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import PositiveInt

from .anomalib_models import AnomalibDetector, AnomalibTrained, anomalib_module
from .base import AnomalyOutput
from .registry import register_detector


class GradTorch:
    """``torch`` as an anomalib module sees it, with ``no_grad`` a no-op: values are unchanged,
    the graph is kept."""

    no_grad = staticmethod(nullcontext)

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextmanager
def no_grad_inert(*modules: str):
    """While inside, ``torch.no_grad()`` in the anomalib ``modules`` (import paths) keeps the
    graph; restored on exit, whatever happens."""
    from unittest.mock import patch

    with ExitStack() as stack:
        for path in modules:
            stack.enter_context(patch.object(importlib.import_module(path), "torch", GradTorch()))
        yield


class AnomalibTrainedNoGrad(AnomalibTrained):
    """A trained anomalib model whose forward wraps feature extraction in ``torch.no_grad``:
    scored by anomalib's forward with that block inert (``no_grad_modules``)."""

    no_grad_modules: tuple[str, ...] = ()

    def score_images(self, x: Tensor) -> AnomalyOutput:
        with no_grad_inert(*self.no_grad_modules):
            return super().score_images(x)


@register_detector("anomalib_patchflow")
class AnomalibPatchflow(AnomalibTrainedNoGrad):
    """Patchflow as anomalib implements it: multi-scale frozen CNN (or DINOv2) features, pooled
    per patch and fused, a channel adaptor and a normalising flow trained on them; the map is the
    flow's negative log-likelihood, the score its maximum."""

    name = "anomalib_patchflow"
    lightning_name = "Patchflow"
    no_grad_modules = ("anomalib.models.image.patchflow.torch_model",)
    tiny = {"backbone": "resnet18", "input_size": 64, "epochs": 3, "flow_feature_dim": 16, "flow_hidden_dim": 16}

    def __init__(self, backbone: str = "tf_efficientnet_b5", weights: str = "random", flow_steps: PositiveInt = 1,
                 flow_feature_dim: PositiveInt = 128, num_scales: PositiveInt = 3, patch_size: PositiveInt = 3,
                 flow_hidden_dim: PositiveInt = 128, lr: float = 0.001, weight_decay: float = 0.0001,
                 epochs: PositiveInt = 100, fit_batch_size: PositiveInt = 32, input_size: PositiveInt = 256):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, pre_trained=weights == "timm", flow_steps=flow_steps,
                         flow_feature_dim=flow_feature_dim, num_scales=num_scales, patch_size=patch_size,
                         flow_hidden_dim=flow_hidden_dim, lr=lr, weight_decay=weight_decay)


@register_detector("anomalib_general_ad")
class AnomalibGeneralAd(AnomalibTrainedNoGrad):
    """GeneralAD (Strater et al., ECCV 2024) as anomalib implements it: a frozen ViT's patch
    features, a transformer discriminator trained to tell them from distorted ones; the map is
    the patch logits upsampled, the score the mean of the ``top_k`` largest. Trained for
    ``epochs`` (also its cosine schedule's length) without anomalib's checkpoint selection by
    validation AUROC (there is no validation set: that would use test labels)."""

    name = "anomalib_general_ad"
    lightning_name = "GeneralAD"
    no_grad_modules = ("anomalib.models.image.general_ad.torch_model",)
    epochs_key = "epochs"
    tiny = {"backbone": "vit_tiny_patch16_224", "layers": [1, 2], "hidden_dim": 64, "input_size": 64, "epochs": 20, "top_k": 2}

    def __init__(self, backbone: str = "vit_large_patch14_dinov2.lvd142m", layers: list[int] | None = None,
                 weights: str = "random", hidden_dim: PositiveInt = 2048, lr: float = 5e-4, lr_decay_factor: float = 0.2,
                 weight_decay: float = 1e-5, noise_std: float = 0.25, dsc_layers: PositiveInt = 1, dsc_heads: PositiveInt = 4,
                 dsc_dropout: float = 0.1, num_fake_patches: int = -1,
                 fake_feature_type: Literal["random", "attn", "copy_out", "shuffle", "randshuffle", "copy_out_and_random",
                                            "copy_out_and_attn"] = "random",
                 top_k: PositiveInt = 10, epochs: PositiveInt = 160, fit_batch_size: PositiveInt = 32,
                 input_size: PositiveInt = 518):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, layers=tuple(layers or [24]), pre_trained=weights == "timm",
                         hidden_dim=hidden_dim, lr=lr, lr_decay_factor=lr_decay_factor, weight_decay=weight_decay,
                         noise_std=noise_std, dsc_layers=dsc_layers, dsc_heads=dsc_heads,
                         dsc_dropout=dsc_dropout, num_fake_patches=num_fake_patches,
                         fake_feature_type=fake_feature_type, top_k=top_k)

    def image_features(self, x: Tensor) -> Tensor:
        """The frozen ViT's patch features as a grid: (B, C, h, w)."""
        features = self.model.feature_extractor(self.prepare(x))
        side = self.model.patches_per_side
        return features.transpose(1, 2).reshape(features.shape[0], -1, side, side)


@register_detector("anomalib_rad")
class AnomalibRad(AnomalibDetector):
    """RAD (retrieval-based anomaly detection, 2026) as anomalib implements it: multi-layer ViT
    tokens of the train images as memory banks; a test image retrieves its ``k_image`` nearest
    train images by class token, each patch is scored against their patches near the same
    position (``pos_radius``); the map is blurred, the score the mean of its top ``max_ratio``.
    Score-only: anomalib's scoring has no input gradient (module docstring)."""

    name = "anomalib_rad"
    differentiable = False
    tiny = {"backbone": "vit_tiny_patch16_224", "input_size": 64, "k_image": 4}

    def __init__(self, backbone: str = "vit_base_patch16_dinov3", layers: list[int] | None = None,
                 weights: str = "random", k_image: PositiveInt = 150, use_positional_bank: bool = True,
                 pos_radius: int = 1, max_ratio: float = 0.01, input_size: PositiveInt = 448):
        for problem in self.check_config(backbone=backbone, weights=weights, input_size=input_size):
            raise UserError(problem)
        rad = anomalib_module("anomalib.models.image.rad.torch_model")
        try:
            model = rad.RadModel(backbone=backbone, pre_trained=weights == "timm", layers=list(layers or [3, 6, 9, 11]),
                                 k_image=k_image, use_positional_bank=use_positional_bank, pos_radius=pos_radius,
                                 max_ratio=max_ratio)
        except ValueError as err:  # anomalib's own checks of the keys (a non-ViT backbone, a negative radius, ...)
            raise UserError(f"anomalib_rad: {err}", key="detectors") from err
        super().__init__(model, input_size=input_size, weights=weights)

    def finish_fit(self) -> None:
        self.model.build_memory_bank()

    def image_features(self, x: Tensor) -> Tensor:
        """The last layer's class token, which retrieves the nearest train images: (B, C)."""
        tokens = list(self.model.feature_extractor(self.prepare(x)).values())[-1]
        return tokens[:, 0] if tokens.dim() == 3 else tokens

    @torch.no_grad()
    def score_images(self, x: Tensor) -> AnomalyOutput:
        out = self.model(self.prepare(x))
        return AnomalyOutput(score=out.pred_score.reshape(x.shape[0]), map=out.anomaly_map.reshape(x.shape[0], *x.shape[-2:]))

