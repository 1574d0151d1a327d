"""The bank search returns the truly nearest rows, ties by index, in every candidate format.

The reference is independent of the search: features are multiples of 2⁻²³ (exact in fp32),
so integer arithmetic gives every squared distance exactly.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robustad_bench.adapters import exact_search
from robustad_bench.adapters.exact_search import (
    FORMATS,
    SearchStats,
    candidate_pass,
    distance_bound,
    prepare,
    search,
)
from robustad_bench.adapters.knn import MemoryBank

SCALE = 2**23


def exact_nearest(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k nearest rows by exact integer distances, ties by index."""
    q = (queries.double().numpy() * SCALE).astype(np.int64)
    b = (bank.double().numpy() * SCALE).astype(np.int64)
    assert np.array_equal(q / SCALE, queries.double().numpy()) and np.array_equal(b / SCALE, bank.double().numpy())
    d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    order = [np.lexsort((np.arange(b.shape[0]), row))[:k] for row in d]
    return torch.from_numpy(np.stack(order))


def grid_features(rng: np.random.Generator, n: int, dim: int) -> torch.Tensor:
    """Random features on a 2⁻¹⁰ grid in [−8, 8): spread out, no near ties."""
    return torch.from_numpy(rng.integers(-8 * 1024, 8 * 1024, (n, dim)) / 1024).float()


def clustered(spread: int = 64, sides: int = 2, n_bank: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One cluster at c, or two at ±c (‖c‖ ≈ 6), whose members differ by up to ``spread`` ×
    2⁻²² per coordinate — distances up to a million times smaller than the norms, which the
    centring cancels for one cluster but not for two — and 40 exact duplicate rows."""
    rng = np.random.default_rng(seed)
    dim = 16
    centre = np.float32(rng.uniform(1.01, 1.99, dim)).astype(np.float64)
    side = rng.choice([-1.0, 1.0], (n_bank, 1)) if sides == 2 else np.ones((n_bank, 1))
    bank = side * centre + rng.integers(-spread, spread, (n_bank, dim)) * 2.0**-22
    bank[-40:] = bank[:40]
    queries = centre + rng.integers(-spread, spread, (40, dim)) * 2.0**-22
    return torch.from_numpy(queries).float(), torch.from_numpy(bank).float()


# what the bf16 pass meets on each: a float64 re-rank, the fp32 fallback, every row
CASES = {"re-rank": {"sides": 1}, "fp32 fallback": {"spread": 2**17}, "exhaustive": {}}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("k", [1, 3])
def test_every_format_returns_the_exact_nearest_rows(fmt, k):
    rng = np.random.default_rng(1)
    bank, queries = grid_features(rng, 600, 24), grid_features(rng, 50, 24)
    assert torch.equal(search(queries, bank, k, precision=fmt), exact_nearest(queries, bank, k))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("case", CASES)
def test_near_ties_and_duplicates_are_ordered_exactly_ties_by_index(fmt, case):
    queries, bank = clustered(**CASES[case])
    reference = exact_nearest(queries, bank, 3)
    stats = SearchStats()
    assert torch.equal(search(queries, bank, 3, precision=fmt, stats=stats), reference)
    assert stats.queries == 40 and stats.exact_comparisons > 0  # the duplicates are exact ties
    if case == "re-rank":
        return
    # the data is hard: one fp32 GEMM over the raw rows, the search before this one, errs
    plain = torch.addmm(bank.pow(2).sum(1)[None], queries, bank.T, alpha=-2).topk(3, dim=1, largest=False).indices
    assert not torch.equal(plain, reference)


def test_each_path_is_taken_where_the_pass_cannot_prove_more():
    expected = {"re-rank": (40, 0, 0), "fp32 fallback": (40, 40, 0), "exhaustive": (0, 40, 40)}
    for case, (reranked, fp32, exhaustive) in expected.items():
        queries, bank = clustered(**CASES[case])
        stats = SearchStats()
        assert torch.equal(search(queries, bank, 1, precision="bf16", stats=stats), exact_nearest(queries, bank, 1))
        assert (stats.reranked > 0, stats.fallback_fp32, stats.fallback_exhaustive) == (reranked > 0, fp32, exhaustive), case
    # more copies of the nearest row than candidates: no candidate pass proves; the lowest index wins
    rng = np.random.default_rng(2)
    others = grid_features(rng, 300, 16)
    copy = torch.full((1, 16), 0.5)
    bank = torch.cat([others[:100], copy.expand(50, -1), others[100:]])
    query = copy + 2**-10
    stats = SearchStats()
    found = search(query, bank, 2, precision="fp32", candidates=8, stats=stats)
    assert found.tolist() == [[100, 101]] and stats.fallback_exhaustive == 1


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_error_bound_covers_the_candidate_pass(fmt):
    """|‖q − b‖² − ‖q − μ‖² − s̃| ≤ E'(q) on every row, in exact rational arithmetic from the
    fp32 rows and queries (the centring's rounding included); the reduced formats' errors are
    a visible part of their bound."""
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(rng.normal(size=(40, 12)) * 3 + 50).float()
    queries = torch.from_numpy(rng.normal(size=(15, 12)) * 3 + 50).float()
    index = prepare(rows)
    centred = queries - index.centre
    values, found = candidate_pass(centred, index, FORMATS[fmt], keep=40)
    bound = distance_bound(FORMATS[fmt], centred, index)
    worst = 0.0
    for i in range(15):
        q = [Fraction(float(v)) for v in queries[i]]
        offset = sum(Fraction(float(v)) ** 2 for v in centred[i]) * (fmt != "faiss")  # faiss's values include it
        for j, row in enumerate(found[i].tolist()):
            exact = sum((x - Fraction(float(y))) ** 2 for x, y in zip(q, rows[row])) - offset
            error = abs(Fraction(float(values[i, j])) - exact)
            assert error <= Fraction(float(bound[i]))
            worst = max(worst, float(error) / float(bound[i]))
    assert worst > (1e-3 if fmt in ("tf32", "bf16") else 0)


def test_the_rows_found_do_not_depend_on_the_batch_or_the_chunk(monkeypatch):
    queries, bank = clustered(**CASES["fp32 fallback"])
    whole = search(queries, bank, 2, precision="bf16")
    alone = torch.cat([search(queries[i : i + 1], bank, 2, precision="bf16") for i in range(queries.shape[0])])
    real = exact_search.candidate_pass
    monkeypatch.setattr(exact_search, "candidate_pass", lambda *a, **kw: real(*a, **kw, budget=500 * 3))
    chunked = search(queries.flip(0), bank, 2, precision="bf16").flip(0)
    assert torch.equal(whole, alone) and torch.equal(whole, chunked)


def test_the_memory_bank_reads_its_precision_and_counts_its_searches(monkeypatch):
    queries, rows = clustered(sides=1)
    bank = MemoryBank()
    bank.set(rows)
    monkeypatch.setenv(exact_search.ENV, "bf16")
    found = bank.nearest(queries, k=2)
    assert torch.equal(found, exact_nearest(queries, rows, 2)) and bank.stats.queries == 40
    monkeypatch.setenv(exact_search.ENV, "fp16")
    with pytest.raises(ValueError, match=r"fp16.*allowed auto, fastest, fp32, tf32, bf16, faiss.*ROBUSTAD_SEARCH_PRECISION"):
        bank.nearest(queries)


def test_fastest_times_each_format_once_per_bank_and_keeps_the_quickest(monkeypatch):
    """``fastest`` keeps the format its first search times quickest (here bf16, by a clock that
    makes it so) for every later search of that bank, and re-times after the bank changes; the
    rows are the exact ones whichever it keeps."""
    queries, rows = clustered(sides=1)
    timed = []

    def fake_search(q, index, k, *, precision="fp32", **kwargs):
        timed.append(precision)
        return search(q, index, k, precision=precision, **kwargs)

    cost = {"fp32": 10.0, "tf32": 5.0, "bf16": 1.0, "faiss": 20.0}  # seconds a search "takes" in each format

    def fake_clock():
        return sum(cost[name] for name in timed)

    monkeypatch.setattr(exact_search, "search", fake_search)
    monkeypatch.setattr(exact_search, "time", SimpleNamespace(perf_counter=fake_clock))
    monkeypatch.setattr("robustad_bench.adapters.knn.search", fake_search)
    monkeypatch.setenv(exact_search.ENV, "fastest")
    bank = MemoryBank()
    bank.set(rows)
    assert bank.candidate_format(torch.device("cpu")) == "fastest"  # not timed yet
    found = bank.nearest(queries, k=2)
    names = exact_search.runnable_formats(torch.device("cpu"))
    assert timed == [name for name in names for _ in (0, 1)] + ["bf16"]  # each warmed up and timed, then the search
    assert bank.candidate_format(torch.device("cpu")) == "bf16" and bank.stats.queries == 40
    assert torch.equal(found, exact_nearest(queries, rows, 2))
    timed.clear()
    bank.nearest(queries, k=2)
    assert timed == ["bf16"]  # timed once per bank
    bank.set(rows[:300])
    bank.nearest(queries, k=2)
    assert len(timed) == 1 + 2 * len(names) + 1  # a new bank is timed again
    monkeypatch.delenv(exact_search.ENV)
    assert MemoryBank().candidate_format(torch.device("cpu")) == "fp32"  # auto on the CPU: no timing


# -- on the GPU: the real TF32 / bf16 tensor-core arithmetic, not its emulation ----------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cuda_formats() -> list[str]:
    return sorted(exact_search.runnable_formats(torch.device("cuda")))


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("fmt", cuda_formats())
@pytest.mark.parametrize("case", CASES)
def test_on_cuda_every_format_orders_near_ties_exactly(fmt, case):
    queries, bank = clustered(**CASES[case])
    found = search(queries.cuda(), bank.cuda(), 3, precision=fmt)
    assert torch.equal(found.cpu(), exact_nearest(queries, bank, 3))
    rng = np.random.default_rng(1)
    bank, queries = grid_features(rng, 600, 24), grid_features(rng, 50, 24)
    assert torch.equal(search(queries.cuda(), bank.cuda(), 3, precision=fmt).cpu(), exact_nearest(queries, bank, 3))


@pytest.mark.gpu
@CUDA
def test_on_cuda_a_paper_sized_search_equals_the_cpu_fp32_search_in_every_format():
    """PatchCore WRN-50-2's shape: 1,536-dim non-negative features, a 30,000-row bank, 4,096
    queries; every CUDA format finds the rows the CPU's proven fp32 search finds, and the
    record says how many queries needed more than the candidate pass."""
    g = torch.Generator().manual_seed(0)
    bank = torch.relu(torch.randn(30_000, 1536, generator=g))
    queries = torch.relu(bank[torch.randint(0, 30_000, (4096,), generator=g)] + 0.3 * torch.randn(4096, 1536, generator=g))
    reference = search(queries, bank, 3, precision="fp32")
    for fmt in cuda_formats():
        stats = SearchStats()
        found = search(queries.cuda(), bank.cuda(), 3, precision=fmt, stats=stats)
        assert torch.equal(found.cpu(), reference), fmt
        print(fmt, stats.as_dict())


@pytest.mark.gpu
@CUDA
def test_on_cuda_the_memory_banks_distances_do_not_depend_on_the_format():
    g = torch.Generator().manual_seed(1)
    rows, queries = torch.relu(torch.randn(5000, 256, generator=g)), torch.relu(torch.randn(2000, 256, generator=g))
    out = {}
    for fmt in cuda_formats():
        bank = MemoryBank(precision=fmt).cuda()
        bank.set(rows.cuda())
        out[fmt] = bank.distances(queries.cuda(), k=3).cpu()
    assert all(torch.equal(value, out["fp32"]) for value in out.values())


@pytest.mark.gpu
@CUDA
def test_on_cuda_auto_keeps_the_fastest_format_and_its_rows_are_the_exact_ones(monkeypatch):
    monkeypatch.delenv(exact_search.ENV, raising=False)
    g = torch.Generator().manual_seed(2)
    rows, queries = torch.relu(torch.randn(20_000, 1536, generator=g)), torch.relu(torch.randn(3000, 1536, generator=g))
    bank = MemoryBank().cuda()
    bank.set(rows.cuda())
    found = bank.nearest(queries.cuda(), k=3)
    print("auto on CUDA kept", bank.candidate_format(torch.device("cuda")), bank.stats.as_dict())
    assert bank.candidate_format(torch.device("cuda")) in cuda_formats()
    assert torch.equal(found.cpu(), search(queries, rows, 3, precision="fp32"))
