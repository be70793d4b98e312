"""Budgeted pairwise top-k similarity, and the weighted k-NN vote built on it.

``iter_topk`` multiplies one chunk of queries at a time with the bank (itself split into blocks when one row
of similarities would not fit), keeps a running top-k per query and yields it chunk by chunk, so memory
stays at one similarity block whatever the sizes; torch ops only, so it runs on any device. The vote is the
weighted k-NN classifier of DINO (Caron et al., ICCV 2021, ``eval_knn.py``, after Wu et al. 2018; solo-learn's
``WeightedKNNClassifier``):

    score_c(q) = Σ_{t ∈ N_k(q), y_t = c} exp(sim(q, t) / T),   T = 0.07,   sim = cosine.

Ties (duplicate rows are common in real data): equal similarities are ordered by increasing bank row index,
at the k-th place too (``topk_lowest_index``), so the neighbours are those of a stable descending sort of
the full similarity row, whatever the chunking, given the same similarity values. A GEMM may round one pair
differently in another block shape (OpenBLAS and cuBLAS alike), and two copies of one row differently in one
product, so exact duplicates only tie if searched once: ``common.duplicates`` (used by the probes' k-NN).
The vote adds the neighbours in that order (one column at a time, so no atomics reorder the sum on a GPU);
equal class scores are broken by the caller (lower class index first: a stable sort, or argmax's first
maximum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .arrays import l2_normalize
from .budget import MEMORY_BUDGET, rows_per_chunk

KNN_TEMPERATURE = 0.07
MIN_QUERY_ROWS = 64  # the bank is split only when fewer query rows than this would fit the budget
# The tie fix of ``topk_lowest_index`` works on 1/TIE_CHECK_SPLIT of a block's rows at a time: its
# temporaries (a copy of those rows, a boolean mask and an int32/int64 key per entry) stay under ~10 % of a
# float32 similarity block, inside the slack of the budget (and exist only where the k-th value is tied).
TIE_CHECK_SPLIT = 32

MatmulFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChunkPlan:
    """Rows of queries and of the bank multiplied at once."""

    query_rows: int
    bank_rows: int


def plan_chunks(
    n_bank: int,
    k: int,
    *,
    budget: int = MEMORY_BUDGET,
    itemsize: int = 4,
    per_query_bytes: int = 0,
    split_bank: bool = True,
    query_rows: int | None = None,
    bank_rows: int | None = None,
) -> ChunkPlan:
    """Chunk sizes that keep one similarity block (itemsize bytes per entry) plus `per_query_bytes` of other
    per-query state under `budget`:

        bank_rows  = n_bank when ≥ MIN_QUERY_ROWS queries fit against the whole bank (or not `split_bank`),
                     else max(k, (budget // MIN_QUERY_ROWS − per_query_bytes) // itemsize), clipped to [1, n_bank];
        query_rows = max(1, budget // (itemsize·bank_rows + per_query_bytes)).

    `query_rows` / `bank_rows` given explicitly are used instead (clipped the same way).
    """
    if bank_rows is None:
        fits = budget // max(1, itemsize * n_bank + per_query_bytes)
        if not split_bank or fits >= MIN_QUERY_ROWS:
            bank_rows = n_bank
        else:
            bank_rows = max(k, (budget // MIN_QUERY_ROWS - per_query_bytes) // itemsize)
    bank_rows = max(1, min(int(bank_rows), n_bank))
    if query_rows is None:
        query_rows = rows_per_chunk(budget, itemsize * bank_rows + per_query_bytes)
    return ChunkPlan(query_rows=max(1, int(query_rows)), bank_rows=bank_rows)


def iter_topk(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    plan: ChunkPlan,
    *,
    exclude_self: bool = False,
    matmul: MatmulFn = torch.matmul,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """(start, stop, values, indices) per chunk of queries: the k largest sim = prepare(q) · bankᵀ of each
    query row start..stop, descending, with their bank row indices (int64); k is clamped to the candidates.
    Equal similarities come in increasing bank index, at the k-th place too (``topk_lowest_index`` on every
    block and on every merge), so the answer does not depend on the plan.

    prepare  -- applied to each query chunk before the product (e.g. ``l2_normalize``); None: as given.
    matmul   -- the product (a @ b by default; pass another GEMM to keep its rounding).
    exclude_self -- queries are the bank's own rows: query i never returns bank row i (its similarity is set
                    to −inf before the top-k), so at most n_bank − 1 neighbours.
    """
    n_q, n_b = int(queries.shape[0]), int(bank.shape[0])
    if exclude_self and n_q != n_b:
        raise ValueError(f"exclude_self needs the queries to be the bank's rows, got {n_q} and {n_b} rows")
    k = min(int(k), n_b - 1 if exclude_self else n_b)
    if k < 1:
        raise ValueError("top-k needs k ≥ 1 and at least one candidate row")
    for a in range(0, n_q, plan.query_rows):
        q = queries[a : a + plan.query_rows]
        if prepare is not None:
            q = prepare(q)
        m = int(q.shape[0])
        best_v = best_i = None
        for s in range(0, n_b, plan.bank_rows):
            sim = matmul(q, bank[s : s + plan.bank_rows].T)
            if exclude_self:
                lo, hi = max(a, s), min(a + m, s + sim.shape[1])
                if lo < hi:
                    own = torch.arange(lo, hi, device=sim.device)
                    sim[own - a, own - s] = float("-inf")
            v, i = topk_lowest_index(sim, k)
            i += s
            if best_v is None:
                best_v, best_i = v, i
            else:
                best_v, best_i = topk_lowest_index(torch.cat([best_v, v], dim=1), k,
                                                   index=torch.cat([best_i, i], dim=1))
        assert best_v is not None and best_i is not None
        yield a, a + m, best_v, best_i


def topk_lowest_index(
    values: torch.Tensor, k: int, *, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row of `values` (m, n), in decreasing value and,
    among equal values, increasing index: the first k of a stable descending sort (``torch.topk`` alone
    leaves the order of equal values, and which of them make the cut, to its implementation).

    index -- (m, n) int64 indices of the entries, distinct within a row (e.g. the candidates of a merge);
             None: the column positions 0..n−1. k is clamped to n.

    Cost beyond ``torch.topk``: one more entry per row (the (k+1)-th tells whether the k-th value is tied
    across the cut), a lowest-index pick on the rows where it is, and two sorts of the (m, k) result when
    some selected values are equal. Without ties it returns torch.topk's answer.
    """
    m, n = int(values.shape[0]), int(values.shape[1])
    k = min(int(k), n)
    v, pos = torch.topk(values, min(k + 1, n), dim=1, largest=True, sorted=True)
    if k == 0 or m == 0:
        return v[:, :k], (pos if index is None else index.gather(1, pos))[:, :k]
    if k < n:
        cut = torch.nonzero(v[:, k - 1] == v[:, k]).flatten()  # the k-th value goes on past the cut
        v, pos = v[:, :k], pos[:, :k].contiguous()
        if cut.numel():
            _lowest_index_at_cut(values, v, pos, index, cut)
    idx = pos if index is None else index.gather(1, pos)
    if k > 1 and bool((v[:, 1:] == v[:, :-1]).any()):  # equal values kept: order them by index
        idx, order = torch.sort(idx, dim=1)
        v, order2 = torch.sort(v.gather(1, order), dim=1, descending=True, stable=True)
        idx = idx.gather(1, order2)
    return v, idx


def _lowest_index_at_cut(
    values: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, index: torch.Tensor | None, rows: torch.Tensor
) -> None:
    """Rewrite pos[rows] in place, rows whose k-th value v[:, -1] is tied with an entry left out: the tied
    slots (the last ones of each sorted row) take the tied entries of lowest index. Works on
    ceil(m / TIE_CHECK_SPLIT) of the rows at a time."""
    m, n = int(values.shape[0]), int(values.shape[1])
    k = int(v.shape[1])
    step = max(1, -(-m // TIE_CHECK_SPLIT))
    key_dtype = torch.int32 if index is None and n < 2**31 else torch.int64
    for a in range(0, int(rows.numel()), step):
        r = rows[a : a + step]
        thr = v[r, k - 1 :]
        need = (v[r] == thr).sum(dim=1)  # the tied slots of these rows, now filled by the lowest indices
        eq = values[r] == thr
        if index is None:
            neg_idx = -torch.arange(n, device=values.device, dtype=key_dtype)
        else:
            neg_idx = -index[r]
        key = torch.where(eq, neg_idx, torch.iinfo(key_dtype).min)
        del eq
        _, lowest = torch.topk(key, int(need.max()), dim=1, largest=True, sorted=True)
        src = torch.arange(k, device=values.device) - (k - need)[:, None]  # slot j <- lowest[j − (k − need)]
        picked = lowest.gather(1, src.clamp(0, lowest.shape[1] - 1))
        pos[r] = torch.where(src >= 0, picked, pos[r])


def topk_similarity(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    budget: int = MEMORY_BUDGET,
    exclude_self: bool = False,
    split_bank: bool = True,
    matmul: MatmulFn = torch.matmul,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each (n_queries, min(k, candidates)): ``iter_topk`` over the whole query set with
    ``plan_chunks(n_bank, k, budget=budget, itemsize=queries.element_size(), split_bank=split_bank)``."""
    n_bank = int(bank.shape[0])
    plan = plan_chunks(n_bank, k, budget=budget, itemsize=queries.element_size(), split_bank=split_bank)
    parts = list(iter_topk(queries, bank, k, plan, exclude_self=exclude_self, matmul=matmul))
    if not parts:
        width = min(int(k), n_bank - int(exclude_self))
        return (queries.new_zeros((0, width)), torch.zeros((0, width), dtype=torch.int64, device=queries.device))
    return torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


def knn_votes(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, n_classes: int, temperature: float = KNN_TEMPERATURE
) -> torch.Tensor:
    """Class scores (m, n_classes) in sims' dtype: Σ over the given neighbours of exp(sim / T) into their class
    (class indices 0..n_classes − 1). Pass sims[:, :k] and labels[:, :k] for a smaller k.

    The neighbours are added one column at a time in their given order (nearest first), so every device sums
    in the same order (a single scatter_add_ with repeated classes in a row is atomic, hence unordered, on a
    GPU) and the scores do not depend on the chunking."""
    votes = torch.zeros((sims.shape[0], n_classes), dtype=sims.dtype, device=sims.device)
    weights = torch.exp(sims / temperature)
    for j in range(int(sims.shape[1])):
        votes.scatter_add_(1, neighbour_labels[:, j : j + 1], weights[:, j : j + 1])
    return votes


def knn_votes_at(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, n_classes: int, ks: list[int],
    temperature: float = KNN_TEMPERATURE,
) -> list[torch.Tensor]:
    """``knn_votes(sims[:, :k], neighbour_labels[:, :k], ...)`` for every k of `ks` (each ≤ the columns), from
    one pass over the neighbours: the same sums, in the same order."""
    votes = torch.zeros((sims.shape[0], n_classes), dtype=sims.dtype, device=sims.device)
    weights = torch.exp(sims / temperature)
    snapshots = {0: votes.clone()} if 0 in ks else {}
    for j in range(max(ks, default=0)):
        votes.scatter_add_(1, neighbour_labels[:, j : j + 1], weights[:, j : j + 1])
        if j + 1 in ks:
            snapshots[j + 1] = votes.clone()
    return [snapshots[k] for k in ks]

def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    *,
    temperature: float = KNN_TEMPERATURE,
    budget: int = MEMORY_BUDGET,
) -> torch.Tensor:
    """Arg-max class of the weighted k-NN vote for each query (ties: the lower class index), in float64:
    both sides L2-normalised, k clamped to the bank size, bank_labels class indices 0..K−1 (K = max + 1),
    queries chunked against the whole bank (``plan_chunks(split_bank=False)``, 8-byte similarities)."""
    b = l2_normalize(bank.to(torch.float64))
    q = l2_normalize(queries.to(torch.float64))
    k = min(k, b.shape[0])
    n_cls = int(bank_labels.max()) + 1
    plan = plan_chunks(b.shape[0], k, budget=budget, itemsize=8, split_bank=False)
    preds = [knn_votes(v, bank_labels[i], n_cls, temperature).argmax(dim=1)
             for _, _, v, i in iter_topk(q, b, k, plan)]
    return torch.cat(preds)
