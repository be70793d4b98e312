"""Budgeted pairwise top-k similarity, and the weighted k-NN vote built on it.

``iter_topk`` multiplies one chunk of queries at a time with the bank (itself split into blocks when one row
of similarities would not fit), keeps a running top-k per query and yields it chunk by chunk, so memory
stays at one similarity block whatever the sizes; torch ops only, so it runs on any device. The vote is the
weighted k-NN classifier of DINO (Caron et al., ICCV 2021, ``eval_knn.py``, after Wu et al. 2018; solo-learn's
``WeightedKNNClassifier``):

    score_c(q) = Σ_{t ∈ N_k(q), y_t = c} exp(sim(q, t) / T),   T = 0.07,   sim = cosine.

Ties: exactly equal similarities at the k-th place are resolved by ``torch.topk``'s implementation-defined
order (it may differ between devices and chunkings); with continuous features this does not occur.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .arrays import l2_normalize
from .budget import MEMORY_BUDGET, rows_per_chunk

KNN_TEMPERATURE = 0.07
MIN_QUERY_ROWS = 64  # the bank is split only when fewer query rows than this would fit the budget

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
            v, i = torch.topk(sim, min(k, sim.shape[1]), dim=1, largest=True, sorted=True)
            i += s
            if best_v is None:
                best_v, best_i = v, i
            else:
                v_cat, i_cat = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
                best_v, pos = torch.topk(v_cat, min(k, v_cat.shape[1]), dim=1, largest=True, sorted=True)
                best_i = i_cat.gather(1, pos)
        assert best_v is not None and best_i is not None
        yield a, a + m, best_v, best_i


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
    (class indices 0..n_classes − 1). Pass sims[:, :k] and labels[:, :k] for a smaller k."""
    votes = torch.zeros((sims.shape[0], n_classes), dtype=sims.dtype, device=sims.device)
    votes.scatter_add_(1, neighbour_labels, torch.exp(sims / temperature))
    return votes


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
