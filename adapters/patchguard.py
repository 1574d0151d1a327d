"""PatchGuard (Nafez et al., CVPR 2025; seeds 001/002): adversarially trained ViT + attention
discriminator on foreground-aware pseudo-anomalies.

- Backbone: a timm ViT (default ``vit_small_patch14_dinov2`` from random init, the paper's
  ViT-S/14), patch tokens of ``feature_layer`` (default: the last) after the final norm.
- Attention discriminator: learned positional encodings, one self-attention block
  (multi-head attention + LayerNorm + MLP with residuals) and a shared linear layer giving
  one anomaly logit per patch.
- Training (``fit``): every batch holds normal images, pseudo-anomalies (``pseudo_anomaly``)
  with exact masks, and PGD adversarial versions of both (Eq. 6–7: PGD-``train_steps`` at
  ``train_eps`` maximising the training loss, α = 2.5·ε/steps). A patch's label is 1 when
  more than 5 % of its pixels are anomalous. Loss = Σ_patches BCE + α·R, with R (Eq. 4) the
  inverse of the attention mass below δ = 1/num_patches in ``reg_layers`` of the ViT.
  AdamW (lr 8e-4, wd 1e-5), cosine schedule down to lr·0.0125. ``joint_batches: true`` runs a
  step's normal and pseudo-anomalous images as one batch — one PGD over both, one forward of
  all four groups — the same loss (its mean × the groups), in half the kernel launches; only
  the dropout draws differ from the split step (the seed code's, the default).
- Scores: image score = mean of the top-k (k = 5) patch logits; map = patch logits
  upsampled to the input (``blur_sigma`` > 0 adds the code's smoothing, σ = 6 there).

Paper vs code (``REFERENCE-NOTES.md``): defaults follow the paper (random init, top-k 5,
last-layer regulariser R, >5 % patch labels, Grad-CAM saliency); the code's choices are
options: ``weights: timm`` with ``backbone: vit_small_patch14_dinov2.lvd142m``,
``top_k: 3``, ``reg_layers: [6, 9, 12]``, ``blur_sigma: 6``, ``epochs: 1000``.
The trained state is the fit artifact, so every evaluation cell reuses one training run.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import NonNegative, NonNegativeInt, PositiveInt

from .backbones import backbone_problems, create_backbone
from .base import AnomalyOutput, Detector, Normalize, Precision
from .maps import patch_map
from .pseudo_anomaly import foreground_saliency, pseudo_anomalies, upload
from .registry import register_detector

log = logging.getLogger(__name__)


class AttentionBlock(nn.Module):
    """One post-norm transformer block: x = LN(x + MHA(x)); x = x + MLP(x)."""

    def __init__(self, dim: int, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        attended, _ = self.attn(x, x, x, need_weights=False)
        x = self.norm(x + self.drop1(attended))
        return x + self.drop2(self.mlp(x))


class Discriminator(nn.Module):
    """Patch embeddings (B, N, C) → one anomaly logit per patch (B, N)."""

    def __init__(self, dim: int, num_patches: int, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.position = nn.Parameter(torch.randn(num_patches, dim))
        self.block = AttentionBlock(dim, hidden, heads, dropout)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x + self.position)).squeeze(-1)


def attention_probs(attn: nn.Module, x: Tensor, prefix: int) -> Tensor:
    """The softmax attention (B, heads, N, N) a timm ``Attention`` computes on ``x`` (B, T, C),
    restricted to patch tokens (prefix tokens such as CLS dropped)."""
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return probs[:, :, prefix:, prefix:]


def attention_degree_penalty(attentions: list[Tensor], delta: float) -> Tensor:
    """R (Eq. 4) per image, summed over layers: 1 / Σ_{heads, j, k} A·1(A ≤ δ)."""
    total = 0
    for a in attentions:  # (B, heads, N, N)
        low = (a * (a <= delta)).flatten(1).sum(1)
        total = total + 1 / (low + 1e-8)
    return total


def patch_labels(masks: Tensor, patch: int, fraction: float = 0.05) -> Tensor:
    """(B, H, W) pixel masks → (B, N) patch labels: 1 where > ``fraction`` of pixels are anomalous."""
    share = F.avg_pool2d(masks.unsqueeze(1).float(), patch)  # (B, 1, h, w)
    return (share > fraction).float().flatten(1)


@register_detector("patchguard")
class PatchGuard(Detector):
    name = "patchguard"
    tiny = {"backbone": "vit_tiny_patch16_224", "input_size": 64, "epochs": 1, "batch_size": 8,
            "train_steps": 1, "hidden_dim": 64}  # a seconds-on-CPU configuration: contract tests and check-detector
    version = "1"
    weight_keys = (("backbone", "weights"), ("cam_backbone", "cam_weights"))  # the ViT, and the saliency CNN

    def __init__(
        self,
        backbone: str = "vit_small_patch14_dinov2",
        weights: str = "random",
        input_size: PositiveInt = 224,
        feature_layer: int | None = None,
        reg_layers: list[int] | None = None,
        reg_alpha: NonNegative = 1.0,
        hidden_dim: PositiveInt = 2048,
        heads: PositiveInt = 4,
        dropout: NonNegative = 0.2,
        top_k: PositiveInt = 5,
        blur_sigma: NonNegative = 0.0,
        epochs: PositiveInt = 300,
        batch_size: PositiveInt = 16,
        lr: NonNegative = 8e-4,
        weight_decay: NonNegative = 1e-5,
        adversarial: bool = True,
        train_eps: float = 8 / 255,
        train_steps: PositiveInt = 10,
        saliency: Literal["gradcam", "uniform"] = "gradcam",
        cam_backbone: str = "resnet18",
        cam_weights: str = "random",
        k_soft: NonNegativeInt = 3,
        k_hard: PositiveInt = 2,
        joint_batches: bool = False,
        precision: Precision = "fp32",
    ):
        super().__init__()
        for problem in self.check_config(backbone=backbone, weights=weights, cam_backbone=cam_backbone, cam_weights=cam_weights,
                                         input_size=input_size, epochs=epochs, top_k=top_k, train_steps=train_steps):
            raise UserError(problem)
        self.input_size, self.top_k, self.blur_sigma = input_size, top_k, blur_sigma
        self.reg_alpha = reg_alpha
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.adversarial, self.train_eps, self.train_steps = adversarial, train_eps, train_steps
        self.saliency, self.cam_backbone, self.cam_weights = saliency, cam_backbone, cam_weights
        self.k_soft, self.k_hard, self.precision = k_soft, k_hard, precision
        self.joint_batches = joint_batches
        self.normalize = Normalize()
        self.vit, provenance = create_backbone(backbone, weights, num_classes=0, img_size=input_size)
        self.weights = "trained from random init" if provenance == "random" else f"trained from {provenance}"
        depth = len(self.vit.blocks)
        self.feature_layer = feature_layer or depth
        self.reg_layers = list(reg_layers) if reg_layers is not None else [self.feature_layer]
        bad = [i for i in [self.feature_layer, *self.reg_layers] if not 1 <= i <= depth]
        if bad or max(self.reg_layers, default=0) > self.feature_layer:
            raise UserError(f"feature_layer and reg_layers must be in 1..{depth} (reg_layers ≤ feature_layer), got {bad or self.reg_layers}")
        self.patch = self.vit.patch_embed.patch_size[0]
        self.grid = (input_size // self.patch, input_size // self.patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.delta = 1 / self.num_patches  # δ: a patch's share under uniform attention
        self.discriminator = Discriminator(self.vit.embed_dim, self.num_patches, hidden_dim, heads, dropout)
        self.requires_grad_(False)  # trainable only inside fit(); attacks differentiate the input

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        problems = backbone_problems(kwargs)
        problems += [f"Grad-CAM network: {p}" for p in backbone_problems(kwargs, "cam_backbone", "cam_weights")]
        for key in ("epochs", "top_k", "train_steps"):
            if kwargs.get(key, 1) < 1:
                problems.append(f"{key} must be at least 1, got {kwargs[key]}")
        if kwargs.get("input_size", 224) < 32:
            problems.append(f"input_size must be at least 32, got {kwargs['input_size']}")
        return problems

    def embed(self, x: Tensor, *, with_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Patch embeddings (B, N, C) of ``feature_layer``; and the ``reg_layers`` attentions."""
        vit, attentions = self.vit, []
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(self.normalize(x)))))
        for i, block in enumerate(vit.blocks[: self.feature_layer], start=1):
            if with_attention and i in self.reg_layers:
                attentions.append(attention_probs(block.attn, block.norm1(t), vit.num_prefix_tokens))
            t = block(t)
        return vit.norm(t)[:, vit.num_prefix_tokens :], attentions

    def features(self, x: Tensor) -> Tensor:
        e, _ = self.embed(x)
        return e.transpose(1, 2).reshape(e.shape[0], e.shape[2], *self.grid)  # (B, C, h, w)

    def patch_logits(self, x: Tensor) -> Tensor:
        with self.autocast(x):
            return self.discriminator(self.embed(x)[0]).float()  # (B, N)

    def forward(self, x: Tensor) -> AnomalyOutput:
        logits = self.patch_logits(x)
        score = logits.topk(min(self.top_k, logits.shape[1]), dim=1).values.mean(dim=1)
        maps = patch_map(logits.view(-1, *self.grid), x.shape[-2:], self.blur_sigma)
        return AnomalyOutput(score=score, map=maps)

    # -- training --------------------------------------------------------------------------

    def loss(self, x: Tensor, labels: Tensor) -> Tensor:
        """Eq. 5 per image (B,): Σ_patches BCE(logit, label) + α·R."""
        with self.autocast(x):  # training too runs in bf16 with precision: bf16 (the loss in fp32)
            embeddings, attentions = self.embed(x, with_attention=self.reg_alpha > 0)
            logits = self.discriminator(embeddings).float()
        attentions = [a.float() for a in attentions]
        ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1)
        if self.reg_alpha > 0:
            ce = ce + self.reg_alpha * attention_degree_penalty(attentions, self.delta)
        return ce

    def adversarial_examples(self, x: Tensor, labels: Tensor) -> Tensor:
        """PGD (L∞, no random start, α = 2.5·ε/steps) maximising the training loss (Eq. 6)."""
        eps, alpha = self.train_eps, 2.5 * self.train_eps / self.train_steps
        x_adv = x.detach().clone()
        for _ in range(self.train_steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.loss(x_adv, labels).sum(), x_adv)
            x_adv = (x + (x_adv.detach() + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        return x_adv.detach()

    def _saliency(self, images: Tensor, g: torch.Generator) -> Tensor:
        if self.saliency == "uniform":
            return torch.ones(images.shape[0], *images.shape[-2:], device=images.device)
        classifier, provenance = create_backbone(self.cam_backbone, self.cam_weights)
        classifier = classifier.to(images.device).requires_grad_(False)
        log.info("PatchGuard saliency: Grad-CAM of %s (%s weights)", self.cam_backbone, provenance)
        return torch.cat([
            foreground_saliency(classifier, self.normalize, images[s : s + 32], g, self.k_soft)
            for s in range(0, images.shape[0], 32)
        ])

    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        device = self.normalize.mean.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws from the global RNG
            torch.manual_seed(seed)
            g = torch.Generator().manual_seed(seed)
            images = normal_images.to(device)
            saliency = self._saliency(images, g)
            self._train(images, saliency, g)

    def _train(self, images: Tensor, saliency: Tensor, g: torch.Generator) -> None:
        self.requires_grad_(True)
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs, eta_min=self.lr * 0.0125)
        n, steps_per_epoch = images.shape[0], math.ceil(images.shape[0] / self.batch_size)
        saliency = saliency.cpu()  # the anchors are drawn on the CPU: no device round trip per step
        self.train()
        try:
            for epoch in range(self.epochs):
                order, total = torch.randperm(n, generator=g), 0.0
                for s in range(0, n, self.batch_size):
                    idx = order[s : s + self.batch_size]
                    total = total + self._train_step(images[upload(idx, images.device)], saliency[idx], g, optimizer)
                schedule.step()
                if log.isEnabledFor(logging.DEBUG):  # reading the loss waits for the device: only when it is shown
                    log.debug("PatchGuard epoch %d/%d: loss %.4f", epoch + 1, self.epochs, float(total) / steps_per_epoch)
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.eval()
            self.requires_grad_(False)

    def _train_step(self, normal: Tensor, saliency: Tensor, g: torch.Generator, optimizer) -> Tensor:
        """One optimiser step on a batch of normal images and their pseudo-anomalies; returns
        the loss on the device (reading it would stall the host every step)."""
        anomalous, masks = pseudo_anomalies(normal, saliency, g, self.k_hard)
        batches = [(normal, torch.zeros(normal.shape[0], self.num_patches, device=normal.device)),
                   (anomalous, patch_labels(masks, self.patch))]
        if self.joint_batches:  # one batch of every group: Σ_groups mean = groups × the mean over all
            x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
            if self.adversarial:
                x, y = torch.cat([x, self.adversarial_examples(x, y)]), torch.cat([y, y])
            loss = self.loss(x, y).mean() * (x.shape[0] // normal.shape[0])
        else:
            if self.adversarial:
                batches += [(self.adversarial_examples(x, y), y) for x, y in batches]
            loss = sum(self.loss(x, y).mean() for x, y in batches)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
