"""Weighted k-NN classifier of DINO (Caron et al., ICCV 2021, ``eval_knn.py``, after Wu et al., CVPR 2018):

    ẑ = z / ‖z‖,  sim(q, t) = ẑ_q · ẑ_t,  N_k(q) = the k train rows of largest sim,
    score_c(q) = Σ_{t ∈ N_k(q), y_t = c} exp(sim(q, t) / T),   T = 0.07,   k ∈ {10, 20, 100, 200}.

Classes are ranked as DINO's ``probs.sort(1, True)`` over ALL classes (a class without votes scores 0 and
still ranks), so top-5 is "the true class among the first 5 of the full ranking". Ties are deterministic and
independent of the chunking: equal similarities -> lower train row index first (N_k(q) is the first k of a
stable descending sort of the similarity row; identical train rows are searched once, so they share one
computed similarity, ``common.duplicates``); equal class scores -> lower class index first (stable sort).
DINO leaves both to torch's implementation-defined order (and its GEMM may round copies apart).

The neighbour search and the vote are ``common.topk`` (iter_topk, knn_votes_at), run once at max(k): every k
is read from the sorted prefix of the same neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import ProgressFn, no_progress
from worker.suites.common.arrays import l2_normalize
from worker.suites.common.budget import MEMORY_BUDGET
from worker.suites.common.device import resolve_device
from worker.suites.common.duplicates import distinct_rows
from worker.suites.common.topk import KNN_TEMPERATURE, iter_topk, knn_votes_at, plan_chunks

from .gemm import matmul
from .inputs import as_features, as_labels
from .metrics import TOPK, rank

KNN_K: tuple[int, ...] = (10, 20, 100, 200)


@dataclass
class KnnResult:
    """Weighted k-NN votes of each query, per requested k.

    ranked[k] (m, min(5, n_classes)): the first class indices (into ``classes``) of the ranking of all classes
    by decreasing vote, equal votes (zero included) in increasing class index. max_similarity (m,): cosine
    similarity to the nearest train row.
    """

    k: list[int]
    k_effective: list[int]
    classes: np.ndarray
    ranked: dict[int, np.ndarray]
    max_similarity: np.ndarray
    query_chunk: int
    train_chunk: int
    scores: dict[int, np.ndarray] | None = None
    n_distinct_train: int | None = None  # train rows after merging identical ones (``common.duplicates``)

    def accuracy(self, labels: np.ndarray, k: int, top: int = 1) -> float:
        y = as_labels(labels)
        pos = np.searchsorted(self.classes, y)
        pos = np.where((pos < self.classes.size) & (self.classes[np.minimum(pos, self.classes.size - 1)] == y),
                       pos, -2)
        return float(np.mean((self.ranked[k][:, :top] == pos[:, None]).any(axis=1)))


def _check_args(
    train_y: np.ndarray, classes: np.ndarray | None, temperature: float, ks: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(train labels, classes, requested k's) after validation."""
    ty = as_labels(train_y)
    cls = np.unique(ty) if classes is None else np.asarray(classes)
    if not np.all(np.isin(ty, cls)):
        raise ValueError("train labels must all be in `classes`")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ks_req = [int(k) for k in ks]
    if any(k < 1 for k in ks_req):
        raise ValueError(f"k must be ≥ 1, got {ks_req}")
    return ty, cls, ks_req


def weighted_knn(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray,
    query_x: np.ndarray | torch.Tensor,
    *,
    ks: Sequence[int] = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    classes: np.ndarray | None = None,
    device: str | torch.device | None = None,
    memory_budget_bytes: int = MEMORY_BUDGET,
    query_chunk: int | None = None,
    train_chunk: int | None = None,
    return_scores: bool = False,
    progress: ProgressFn = no_progress,
) -> KnnResult:
    """The weighted k-NN vote (module docstring) of every query row against the train rows.

    All classes are ranked by decreasing score (equal scores, zero included: lower class index first, a
    stable sort). k > n_train is clamped to n_train (``k_effective``). Queries are processed in chunks of
    `query_chunk` rows and train rows in blocks of `train_chunk` (``common.topk.plan_chunks`` from
    `memory_budget_bytes` when None: the float32 similarity block plus the top-k buffers and votes stay under
    it). Equal similarities: lower train row first, at the k-th place too, whatever the chunks: identical
    train rows are searched once (``common.duplicates``: one computed similarity for all copies, which then
    follow each other in index order) and the search keeps the lowest index on ties
    (``common.topk.topk_lowest_index``). ``train_chunk`` counts distinct train rows.
    """
    dev = resolve_device(device, train_x)
    ty, cls, ks_req = _check_args(train_y, classes, temperature, ks)
    with torch.no_grad():
        tx_raw = as_features(train_x, dev, torch.float32)
        qx_all = as_features(query_x, dev, torch.float32)
        n_t, d = tx_raw.shape
        if n_t == 0:
            raise ValueError("k-NN needs at least one train row")
        dup = distinct_rows(tx_raw)
        tx = l2_normalize(tx_raw[dup.first] if dup.has_duplicates else tx_raw)
        del tx_raw
        ty_idx = torch.as_tensor(np.searchsorted(cls, ty), device=dev, dtype=torch.int64)
        k_eff = [min(k, n_t) for k in ks_req]
        kmax = max([1, *k_eff])
        n_c = cls.size
        # top-k values/indices (running, block, merged, sorted), vote weights, the running vote and one per k
        # and the expansion of duplicate groups into train rows
        per_query = 12 * 4 * kmax + 4 * kmax + 4 * n_c * (len(ks_req) + 2) + 4 * d + 8 * 6 * kmax
        k_search = min(kmax, dup.n_distinct)
        plan = plan_chunks(dup.n_distinct, k_search, budget=memory_budget_bytes, itemsize=4,
                           per_query_bytes=per_query, query_rows=query_chunk, bank_rows=train_chunk)
        m = qx_all.shape[0]
        ranked = {k: np.empty((m, min(TOPK, n_c)), dtype=np.int64) for k in ks_req}
        scores_out = {k: np.empty((m, n_c)) for k in ks_req} if return_scores else None
        max_sim = np.empty(m)
        for a, b, v, i in iter_topk(qx_all, tx, k_search, plan, matmul=matmul, prepare=l2_normalize):
            if dup.has_duplicates:
                v, i = dup.expand(v, i, kmax)
            max_sim[a:b] = v[:, 0].double().cpu().numpy()
            votes = knn_votes_at(v, ty_idx[i], n_c, k_eff, temperature)
            for k_r, sc in zip(ks_req, votes, strict=True):
                ranked[k_r][a:b] = rank(sc, min(TOPK, n_c))
                if scores_out is not None:
                    scores_out[k_r][a:b] = sc.double().cpu().numpy()
            progress(min(1.0, b / max(m, 1)), f"k-NN: {b}/{m} queries")
    return KnnResult(k=ks_req, k_effective=k_eff, classes=cls, ranked=ranked, max_similarity=max_sim,
                     query_chunk=plan.query_rows, train_chunk=plan.bank_rows, scores=scores_out,
                     n_distinct_train=dup.n_distinct)


def max_cosine_similarity(
    train_x: np.ndarray | torch.Tensor, query_x: np.ndarray | torch.Tensor, **kwargs: Any
) -> np.ndarray:
    """max_t ẑ_q · ẑ_t for every query (the open-set k-NN score), chunked as ``weighted_knn``."""
    n_t = int(train_x.shape[0])
    res = weighted_knn(train_x, np.zeros(n_t, dtype=np.int64), query_x, ks=(1,), **kwargs)
    return res.max_similarity
