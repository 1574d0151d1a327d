"""A memory bank searched exactly for indices, with distances recomputed in torch.

The search (``exact_search``) returns the k rows truly nearest to each query, ties by index,
from a GEMM candidate pass with a proof per query: fp32 on the CPU, on CUDA the fastest
format there, timed once per bank (or the format ``ROBUSTAD_SEARCH_PRECISION`` names),
identical indices in every format. The bank's
centred rows and norms are prepared once per bank and device and reused by every forward
pass, so the k steps of an attack search but never rebuild. The distances to the found rows
are then computed in float32 torch, so values equal brute force and gradients w.r.t. the
queries are exact almost everywhere (DESIGN §5). ``stats`` counts what the searches did.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .exact_search import (
    Prepared,
    SearchStats,
    fastest_format,
    prepare,
    resolve_precision,
    runnable_formats,
    search,
)


class MemoryBank(nn.Module):
    """Rows of normal features in a buffer (so ``state_dict`` round-trips), plus the prepared
    search index; ``precision``: the candidate pass's format (``auto``, ``fastest``, fp32, tf32,
    bf16, faiss), the same nearest rows in each."""

    def __init__(self, precision: str = "auto"):
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, 0))
        self.precision = precision
        self.stats = SearchStats()
        self._prepared: Prepared | None = None

    def set(self, bank: Tensor) -> None:
        self.bank = bank.detach().float().contiguous()
        self._prepared = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "bank"
        if key in state_dict:  # the fitted bank's size is only known from the checkpoint
            self.bank = torch.empty_like(state_dict[key], device=self.bank.device)
            self._prepared = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._prepared = None  # device moves invalidate the index
        return super()._apply(fn, *args, **kwargs)

    def nearest(self, queries: Tensor, k: int = 1) -> Tensor:
        """Indices (N, k) of the k nearest bank rows to ``queries`` (N, C), nearest first,
        ties by index; no gradient."""
        assert self.bank.numel() > 0, "memory bank is empty: call fit() first"
        if self._prepared is None:
            self._prepared = prepare(self.bank)
        precision = resolve_precision(self.precision, queries.device)
        with torch.no_grad():
            if precision == "fastest":
                if self._prepared.fastest is None:  # timed once per prepared bank
                    self._prepared.fastest = fastest_format(queries, self._prepared, k, runnable_formats(queries.device))
                precision = self._prepared.fastest
            return search(queries, self._prepared, k, precision=precision, stats=self.stats)

    def candidate_format(self, device: torch.device) -> str:
        """The format the searches on ``device`` take (``fastest``: until timed, its name)."""
        precision = resolve_precision(self.precision, device)
        if precision == "fastest" and self._prepared is not None and self._prepared.fastest is not None:
            return self._prepared.fastest
        return precision

    def distances(self, queries: Tensor, k: int = 1) -> Tensor:
        """L2 distances (N, k) to the k nearest rows, differentiable w.r.t. ``queries``; in
        float32 whatever the caller's precision."""
        queries = queries.float()
        indices = self.nearest(queries, k)  # (N, k)
        neighbours = self.bank[indices]  # (N, k, C)
        squared = (queries.unsqueeze(1) - neighbours).pow(2).sum(-1)
        return squared.clamp_min(1e-12).sqrt()  # clamp: finite gradient at distance 0


def greedy_coreset(features: Tensor, n: int, *, seed: int, projection_dim: int = 128) -> Tensor:
    """Indices of ``n`` rows chosen by greedy k-center selection (PatchCore, Roth et al. 2022).

    Distances are measured after a seeded Gaussian random projection to ``projection_dim``
    dimensions, as PatchCore does to make selection affordable.
    """
    if n >= features.shape[0]:
        return torch.arange(features.shape[0], device=features.device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = features.float()
    if x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        x = x @ proj.to(x.device)
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    selected = torch.empty(n, dtype=torch.long, device=x.device)
    selected[0] = first
    min_dist = torch.linalg.vector_norm(x - x[first], dim=1)
    for i in range(1, n):
        nxt = torch.argmax(min_dist)
        selected[i] = nxt
        min_dist = torch.minimum(min_dist, torch.linalg.vector_norm(x - x[nxt], dim=1))
    return selected
