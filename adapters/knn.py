"""A memory bank searched exactly for indices, with distances recomputed in torch.

The search finds the nearest bank rows without gradient: faiss ``IndexFlatL2`` on the CPU
(and on CUDA with faiss-gpu), else on CUDA a chunked torch GEMM (‖q‖² − 2 q·b + ‖b‖², the
bank's norms computed once). Either is built once per bank and device and reused by every
forward pass, so the k steps of an attack search but never rebuild. The distances to the
found rows are then computed in float32 torch, so values equal brute force and gradients
w.r.t. the queries are exact almost everywhere (DESIGN §5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _has_faiss_gpu() -> bool:
    try:
        import faiss
    except ImportError:  # on CUDA the torch search serves; faiss is needed on CPU only
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class MemoryBank(nn.Module):
    """Rows of normal features in a buffer (so ``state_dict`` round-trips), plus a search index."""

    def __init__(self):
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, 0))
        self._index = self._norms = None

    def set(self, bank: Tensor) -> None:
        self.bank = bank.detach().float().contiguous()
        self._index = self._norms = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "bank"
        if key in state_dict:  # the fitted bank's size is only known from the checkpoint
            self.bank = torch.empty_like(state_dict[key], device=self.bank.device)
            self._index = self._norms = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._index = self._norms = None  # device moves invalidate the index
        return super()._apply(fn, *args, **kwargs)

    def nearest(self, queries: Tensor, k: int = 1) -> Tensor:
        """Indices (N, k) of the k nearest bank rows to ``queries`` (N, C); no gradient."""
        assert self.bank.numel() > 0, "memory bank is empty: call fit() first"
        queries = queries.detach().float()
        if queries.is_cuda and not _has_faiss_gpu():
            if self._norms is None:
                self._norms = self.bank.pow(2).sum(1)  # the bank's squared norms, once
            return _torch_search(queries, self.bank, k, self._norms)
        import faiss  # imported on use, like timm
        if self._index is None:
            index = faiss.IndexFlatL2(self.bank.shape[1])
            if queries.is_cuda:
                self._gpu_resources = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_resources, queries.device.index or 0, index)
            index.add(self.bank.to("cpu").numpy())
            self._index = index
        _, indices = self._index.search(queries.to("cpu").contiguous().numpy(), k)
        return torch.from_numpy(indices).to(queries.device)

    def distances(self, queries: Tensor, k: int = 1) -> Tensor:
        """L2 distances (N, k) to the k nearest rows, differentiable w.r.t. ``queries``; in
        float32 whatever the caller's precision."""
        queries = queries.float()
        indices = self.nearest(queries, k)  # (N, k)
        neighbours = self.bank[indices]  # (N, k, C)
        squared = (queries.unsqueeze(1) - neighbours).pow(2).sum(-1)
        return squared.clamp_min(1e-12).sqrt()  # clamp: finite gradient at distance 0


def _torch_search(queries: Tensor, bank: Tensor, k: int, bank_norms: Tensor, budget: int = 1 << 28) -> Tensor:
    """Exact k-NN indices by one fp32 GEMM per chunk of queries: argmin over rows of
    ‖b‖² − 2 q·b (‖q‖² is the same for every row), the norms added in the GEMM's epilogue;
    chunks keep the distance block within ``budget`` elements (1 GiB of float32)."""
    chunk = max(1, budget // max(1, bank.shape[0]))
    out = []
    with torch.no_grad(), torch.autocast(queries.device.type, enabled=False):
        for start in range(0, queries.shape[0], chunk):
            q = queries[start : start + chunk]
            d = torch.addmm(bank_norms.unsqueeze(0), q, bank.T, alpha=-2)
            out.append(d.argmin(dim=1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


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
