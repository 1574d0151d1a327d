"""Exact k-nearest-neighbour search whose first pass may run in reduced precision.

The answer is the k bank rows truly nearest to each query — in exact arithmetic, ties going
to the lower row index — whatever pass found them, so every precision and device returns the
same indices:

1. **Candidate pass.** ``s̃ = ‖b‖² − 2 q·b`` for every row by one GEMM per chunk of queries,
   in fp32, TF32 or bf16 (on the CPU the reduced formats are emulated: the operands are
   rounded to the format, TF32 by truncation, its worst case; bf16 also rounds the product,
   as cuBLAS's bf16 output does); the ``c + 1`` smallest are kept.
2. **Error bound.** ``|s̃ − s| ≤ E(q)`` for every row, from ‖q‖, the bank's largest norm and
   the format's unit roundoffs: operand rounding ``(1 + u_in)² − 1``, accumulation
   ``γ_C(u_acc)`` (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1, any
   summation order), the product's rounding ``u_out``, the fp32 norms and the final add.
3. **Re-rank.** The c candidates' distances in float64, directly as Σ (q − b)² (relative
   error ≤ γ_{C+2}(2⁻⁵³): non-negative terms, no cancellation).
4. **Proof.** A row outside the candidates is at least ``‖q‖² + s̃₍c₊₁₎ − E(q)`` away. If that
   exceeds the k-th candidate's upper bound, the k nearest rows are among the candidates.
   Candidates whose float64 distances lie too close to be ordered are compared in exact
   integer arithmetic (an fp32 value times 2¹⁴⁹ is an integer).
5. **Fallback.** A query the margin does not prove goes to the fp32 pass; one that pass
   does not prove either, to the exhaustive pass (every row a candidate, float64).

``SearchStats`` counts the queries, those that fell back to fp32 and to the exhaustive pass,
and the exact comparisons; the harness writes them into the row.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import Tensor

U32 = 2.0**-24  # fp32 unit roundoff (round to nearest)
U64 = 2.0**-53


@dataclass(frozen=True)
class Format:
    """A candidate pass's arithmetic: unit roundoffs of the operands, the accumulation and
    the product's output (0: exact)."""

    name: str
    u_in: float
    u_acc: float
    u_out: float
    full_form: bool = False  # the pass adds ‖q‖² itself (faiss): its rounding enters the bound


# Tensor cores truncate where IEEE rounds, so their accumulation is taken at 4 × fp32's unit
# roundoff, and TF32 operands at 2⁻¹⁰ (truncation to 10 mantissa bits); bf16 at 2⁻⁸, likewise.
FORMATS = {
    "fp32": Format("fp32", 0.0, U32, 0.0),
    "tf32": Format("tf32", 2.0**-10, 4 * U32, 0.0),
    "bf16": Format("bf16", 2.0**-8, 4 * U32, 2.0**-8),
    "faiss": Format("faiss", 0.0, U32, 0.0, full_form=True),  # faiss IndexFlatL2 (GPU with faiss-gpu), fp32
}
PRECISIONS = ("auto", "fastest", *FORMATS)
CANDIDATES = 32  # rows kept per query by the candidate pass (at least k + 1)
ENV = "ROBUSTAD_SEARCH_PRECISION"


@dataclass
class SearchStats:
    """What the searches of a bank did, summed: queries, how many needed a float64 re-rank,
    how many fell back to the fp32 pass and to the exhaustive one, and how many candidate
    groups needed exact comparison."""

    queries: int = 0
    reranked: int = 0  # proven after a float64 re-rank of the rows the pass could not order
    fallback_fp32: int = 0
    fallback_exhaustive: int = 0
    exact_comparisons: int = 0

    def add(self, other: SearchStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: the environment's ``ROBUSTAD_SEARCH_PRECISION`` if set, else ``fastest`` on CUDA
    and fp32 elsewhere (the CPU has no faster format; emulation only tests). ``fastest``: the
    bank times every format this device runs on its first search and keeps the quickest
    (``fastest_format``) — every format returns the same rows, so only the speed depends on it."""
    if precision == "auto":
        precision = os.environ.get(ENV, "auto")
    if precision == "auto":
        return "fastest" if device.type == "cuda" else "fp32"
    if precision != "fastest" and precision not in FORMATS:
        raise ValueError(f"search precision {precision!r}: allowed {', '.join(PRECISIONS)} (from {ENV} or the bank)")
    return precision


def runnable_formats(device: torch.device) -> list[str]:
    """The formats a candidate pass can take on ``device``: every one (the CPU emulates the
    reduced ones), faiss where it is installed — on CUDA only with its GPU build."""
    try:
        import faiss
    except ImportError:
        faiss = None
    usable = faiss is not None and (device.type != "cuda" or hasattr(faiss, "StandardGpuResources"))
    return [name for name in FORMATS if name != "faiss" or usable]


def fastest_format(queries: Tensor, index: Prepared, k: int, names: list[str]) -> str:
    """The format whose search of ``queries`` takes least time (each run once to warm up —
    a faiss index is built, cuBLAS picks its kernels — then timed once)."""
    def synced() -> float:
        if queries.is_cuda:
            torch.cuda.synchronize(queries.device)
        return time.perf_counter()

    seconds = {}
    for name in names:
        search(queries, index, k, precision=name)
        start = synced()
        search(queries, index, k, precision=name)
        seconds[name] = synced() - start
    return min(names, key=seconds.__getitem__)


def gamma(n: int, u: float) -> float:
    """γ_n = n u / (1 − n u): the relative error bound of n roundings."""
    return n * u / (1 - n * u)


def error_bound(fmt: Format, query_norms: Tensor, bank_max_norm: float, dim: int) -> Tensor:
    """E(q) ≥ |s̃ − s| for every bank row, float64 (N,): see the module docstring, step 2."""
    q, b = query_norms.double() * (1 + 1e-9), bank_max_norm * (1 + 1e-9)
    eta = (1 + fmt.u_in) ** 2 * (1 + gamma(dim, fmt.u_acc)) * (1 + fmt.u_out) - 1  # |p̃ − q·b| ≤ η ‖q‖‖b‖
    norm_error = gamma(dim + 1, U32)  # the fp32 ‖b‖²
    add_error = U32 * (1 + norm_error) * (b * b + 2 * (1 + eta) * q * b)  # fl(‖b‖² − 2p̃)
    bound = 2 * eta * q * b + norm_error * b * b + add_error
    if fmt.full_form:  # fl(‖q‖² + ‖b‖² − 2p̃): the fp32 ‖q‖² and one more add
        bound = bound + norm_error * q * q + 2 * U32 * (q + b) ** 2
    return bound * (1 + 1e-6)


def round_operand(x: Tensor, fmt: Format) -> Tensor:
    """``x`` rounded to the format's operand precision, kept in fp32 (the CPU's emulation)."""
    if fmt.name == "bf16":
        return x.bfloat16().float()
    if fmt.name == "tf32":  # truncate to 10 mantissa bits
        return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)
    return x


@dataclass
class Prepared:
    """A bank ready to search: its rows, its mean, the centred rows the candidate pass
    multiplies (distances do not change under a shift, the bound shrinks with the norms),
    their fp32 squared norms and the largest norm (float64)."""

    bank: Tensor
    centre: Tensor
    centred: Tensor
    norms: Tensor
    max_norm: float
    faiss: object = None  # built on first use by the faiss pass
    faiss_resources: object = None
    fastest: str | None = None  # the quickest format, once ``fastest`` has timed them here


def prepare(bank: Tensor) -> Prepared:
    bank = bank.detach().float().contiguous()
    centre = bank.mean(0)
    centred = (bank - centre).contiguous()
    return Prepared(bank, centre, centred, centred.pow(2).sum(1), float(centred.double().norm(dim=1).max()))


def candidate_pass(queries: Tensor, index: Prepared, fmt: Format, keep: int, budget: int = 1 << 28) -> tuple[Tensor, Tensor]:
    """The ``keep`` smallest ``s̃`` per (centred) query and their rows, by one GEMM per chunk of
    queries (chunks keep the block within ``budget`` elements): (N, keep) values and rows."""
    if fmt.name == "faiss":
        return faiss_pass(queries, index, keep)
    bank, bank_norms = index.centred, index.norms
    chunk = max(1, budget // max(1, bank.shape[0]))
    cuda = queries.is_cuda
    bank_op = bank if cuda else round_operand(bank, fmt)
    if cuda and fmt.name == "bf16":
        bank_op = bank.bfloat16()
    values, indices = [], []
    with torch.no_grad(), torch.autocast(queries.device.type, enabled=False):
        for start in range(0, queries.shape[0], chunk):
            q = queries[start : start + chunk]
            if fmt.name == "bf16":
                product = q.bfloat16() @ bank_op.T if cuda else (round_operand(q, fmt) @ bank_op.T).bfloat16()
                s = bank_norms.unsqueeze(0) - 2 * product.float()
            elif cuda:
                with tf32(fmt.name == "tf32"):
                    s = torch.addmm(bank_norms.unsqueeze(0), q, bank_op.T, alpha=-2)
            else:
                s = torch.addmm(bank_norms.unsqueeze(0), round_operand(q, fmt), bank_op.T, alpha=-2)
            v, i = s.topk(keep, dim=1, largest=False)
            values.append(v)
            indices.append(i)
    return torch.cat(values), torch.cat(indices)


def faiss_pass(queries: Tensor, index: Prepared, keep: int) -> tuple[Tensor, Tensor]:
    """The candidate pass by faiss ``IndexFlatL2`` (on the GPU with faiss-gpu), built once per
    prepared bank: its values are whole squared distances, ‖q‖² included (``full_form``)."""
    import faiss  # imported on use, like timm

    if index.faiss is None:
        flat = faiss.IndexFlatL2(index.centred.shape[1])
        if queries.is_cuda and hasattr(faiss, "StandardGpuResources"):
            index.faiss_resources = faiss.StandardGpuResources()
            flat = faiss.index_cpu_to_gpu(index.faiss_resources, queries.device.index or 0, flat)
        flat.add(index.centred.cpu().numpy())
        index.faiss = flat
    values, rows = index.faiss.search(queries.cpu().contiguous().numpy(), keep)
    return torch.from_numpy(values).to(queries.device), torch.from_numpy(rows).to(queries.device)


class tf32:
    """Context: CUDA fp32 matmuls in TF32 (``enabled``) or in full fp32; restores the setting."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


def float64_distances(queries: Tensor, bank: Tensor, rows: Tensor, budget: int = 1 << 25) -> Tensor:
    """Σ (q − b)² in float64 for each query and each of its rows (N, c), chunked."""
    n, c = rows.shape
    chunk = max(1, budget // max(1, c * bank.shape[1]))
    out = []
    for start in range(0, n, chunk):
        q = queries[start : start + chunk].double().unsqueeze(1)
        out.append((q - bank[rows[start : start + chunk]].double()).pow(2).sum(-1))
    return torch.cat(out) if out else queries.new_zeros(0, c, dtype=torch.float64)


def exact_squared_distance(query: np.ndarray, row: np.ndarray) -> int:
    """‖q − b‖² × 2²⁹⁸ as an exact integer: fp32 values times 2¹⁴⁹ are integers, exactly
    representable in float64 and then in Python's ints."""
    q = [int(v) for v in np.ldexp(query.astype(np.float64), 149)]
    b = [int(v) for v in np.ldexp(row.astype(np.float64), 149)]
    return sum((x - y) * (x - y) for x, y in zip(q, b))


def order_exactly(query: np.ndarray, bank: np.ndarray, rows: list[int]) -> list[int]:
    """``rows`` sorted by exact distance to ``query``, ties by index; rows with the same bytes
    are computed once."""
    cache: dict[bytes, int] = {}
    keys = []
    for r in rows:
        content = bank[r].tobytes()
        if content not in cache:
            cache[content] = exact_squared_distance(query, bank[r])
        keys.append((cache[content], r))
    return [r for _, r in sorted(keys)]


def rerank(queries: Tensor, bank: Tensor, rows: Tensor, k: int, stats: SearchStats) -> tuple[Tensor, Tensor]:
    """The candidates ``rows`` (N, c) ordered by true distance, ties by index: (N, c) indices
    and (N, c) float64 distances in that order (exact comparison where float64 cannot order)."""
    dist = float64_distances(queries, bank, rows)
    dist, order = dist.sort(dim=1)  # rows too close to order (ties among them) are ordered exactly below
    rows = rows.gather(1, order)
    g = gamma(bank.shape[1] + 2, U64)
    top = min(k + 1, rows.shape[1])  # what decides the top k: its order and the (k+1)-th
    upper, lower = dist[:, : top - 1] * (1 + g), dist[:, 1:top] * (1 - g)
    unsure = (upper >= lower).any(dim=1).nonzero().flatten().tolist() if top > 1 else []
    if unsure:
        bank_np, rows_np, queries_np = bank.cpu().numpy(), rows.cpu().numpy(), queries.cpu().numpy()
        limit = (dist[:, k - 1] * (1 + g) / (1 - g)).cpu().numpy()
        dist_np = dist.cpu().numpy()
        for i in unsure:  # every candidate that could be among the k nearest, ordered exactly
            band = int((dist_np[i] <= limit[i]).sum())
            ordered = order_exactly(queries_np[i], bank_np, rows_np[i, :band].tolist())
            rows_np[i, :band] = ordered
        stats.exact_comparisons += len(unsure)
        rows = torch.from_numpy(rows_np).to(rows.device)
        dist = float64_distances(queries, bank, rows)
    return rows, dist


def search(queries: Tensor, bank: Tensor | Prepared, k: int, *, precision: str = "fp32", candidates: int = CANDIDATES,
           stats: SearchStats | None = None) -> Tensor:
    """Indices (N, k) of the k truly nearest bank rows to each query, nearest first, ties by
    index; ``precision`` names the candidate pass (steps 1–5 of the module docstring)."""
    stats = stats if stats is not None else SearchStats()
    index = bank if isinstance(bank, Prepared) else prepare(bank)
    queries = queries.detach().float().contiguous()
    stats.queries += queries.shape[0]
    out = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
    pending = torch.arange(queries.shape[0], device=queries.device)
    keep = min(index.bank.shape[0], max(candidates, k) + 1)  # the candidates and the first row outside them
    passes = [precision] + (["fp32"] if precision != "fp32" else [])
    for level, name in enumerate(passes if keep < index.bank.shape[0] else []):
        if pending.numel() == 0:
            break
        if level == 1:
            stats.fallback_fp32 += pending.numel()
        proven = prove(queries[pending], index, k, FORMATS[name], keep, stats)
        out[pending[proven[0]]] = proven[1]
        pending = pending[~proven[0]]
    if pending.numel():
        stats.fallback_exhaustive += pending.numel() if keep < index.bank.shape[0] else 0
        out[pending] = exhaustive(queries[pending], index.bank, k, stats)
    return out


def distance_bound(fmt: Format, centred: Tensor, index: Prepared) -> Tensor:
    """E'(q) ≥ |‖q − b‖² − ‖q − μ‖² − s̃| for every row b, ``centred`` = fl(q − μ): the pass's
    bound plus the centring's own fp32 rounding, which moves a distance by at most
    2.01 u (‖q − μ‖ + max ‖b − μ‖)²; float64 (N,)."""
    q_norm = centred.double().norm(dim=1)
    shift = 2.01 * U32 * (q_norm * (1 + 1e-9) + index.max_norm) ** 2
    return error_bound(fmt, q_norm, index.max_norm, index.bank.shape[1]) + shift


def prove(queries: Tensor, index: Prepared, k: int, fmt: Format, keep: int, stats: SearchStats) -> tuple[Tensor, Tensor]:
    """One candidate pass in ``fmt``: (N,) whether it proves the query's k nearest rows, and
    the proven queries' (n, k) rows.

    Every row's distance is ‖q − μ‖² + s̃ ± E'. Where the k + 1 smallest s̃ are more than 2E'
    apart, their order is the true one and nothing else is needed. Elsewhere the band of
    rows within 2E' of the k-th (every row that can be among the k nearest) is re-ranked in
    float64 — if the band ends before the last row kept; if not, the pass proves nothing."""
    centred = queries - index.centre
    values, rows = candidate_pass(centred, index, fmt, keep)
    width = 2 * distance_bound(fmt, centred, index)  # 2E'
    values = values.double()
    separated = (values[:, 1 : k + 1] - values[:, :k] > width.unsqueeze(1)).all(dim=1)
    limit = values[:, k - 1] + width
    band = (values <= limit.unsqueeze(1)).sum(dim=1)
    proven = separated | (band < keep)
    out = rows[:, :k].clone()
    unsure = (proven & ~separated).nonzero().flatten()
    if unsure.numel():
        stats.reranked += unsure.numel()
        ranked, _ = rerank(queries[unsure], index.bank, rows[unsure, : int(band[unsure].max())], k, stats)
        out[unsure] = ranked[:, :k]
    return proven, out[proven]


def exhaustive(queries: Tensor, bank: Tensor, k: int, stats: SearchStats, chunk: int = 64,
               chunk_rows: int = 4096) -> Tensor:
    """Every row a candidate: float64 distances to the whole bank per chunk of queries; every
    row that could be among the k nearest is ordered exactly (ties by index). (N, k) indices."""
    g = gamma(bank.shape[1] + 2, U64)
    out = []
    for qs in range(0, queries.shape[0], chunk):
        q = queries[qs : qs + chunk]
        blocks = [torch.arange(start, min(start + chunk_rows, bank.shape[0]), device=bank.device).expand(q.shape[0], -1)
                  for start in range(0, bank.shape[0], chunk_rows)]
        dist = torch.cat([float64_distances(q, bank, rows) for rows in blocks], 1)  # (n, M)
        limit = dist.kthvalue(k, dim=1).values * (1 + g) / (1 - g)
        width = min(bank.shape[0], max(k + 1, int((dist <= limit.unsqueeze(1)).sum(1).max())))
        rows = dist.argsort(dim=1, stable=True)[:, :width]  # ties by index
        out.append(rerank(q, bank, rows, k, stats)[0][:, :k])
    return torch.cat(out)
