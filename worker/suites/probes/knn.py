"""Weighted k-NN classifier of DINO (Caron et al., ICCV 2021, ``eval_knn.py``, after Wu et al., CVPR 2018):

    ẑ = z / ‖z‖,  sim(q, t) = ẑ_q · ẑ_t,  N_k(q) = the k train rows of largest sim,
    score_c(q) = Σ_{t ∈ N_k(q), y_t = c} exp(sim(q, t) / T),   T = 0.07,   k ∈ {10, 20, 100, 200}.

The neighbour search and the vote are ``common.topk`` (iter_topk, knn_votes), run once at max(k): every k is
read from the sorted prefix of the same neighbours.
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
from worker.suites.common.topk import KNN_TEMPERATURE, iter_topk, knn_votes, plan_chunks

from .gemm import matmul
from .inputs import as_features, as_labels
from .metrics import TOPK, rank

KNN_K: tuple[int, ...] = (10, 20, 100, 200)


@dataclass
class KnnResult:
    """Weighted k-NN votes of each query, per requested k.

    ranked[k] (m, min(5, n_classes)): class indices (into ``classes``) by decreasing vote, −1 where fewer
    classes got votes. max_similarity (m,): cosine similarity to the nearest train row.
    """

    k: list[int]
    k_effective: list[int]
    classes: np.ndarray
    ranked: dict[int, np.ndarray]
    max_similarity: np.ndarray
    query_chunk: int
    train_chunk: int
    scores: dict[int, np.ndarray] | None = None

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

    Classes are ranked by decreasing score (equal scores: lower class index first, a stable sort; classes with
    no vote are never ranked, −1). k > n_train is clamped to n_train (``k_effective``). Queries are processed
    in chunks of `query_chunk` rows and train rows in blocks of `train_chunk` (``common.topk.plan_chunks``
    from `memory_budget_bytes` when None: the float32 similarity block plus the top-k buffers and votes stay
    under it). Ties at the k-th similarity follow ``torch.topk``'s order (``common.topk``).
    """
    dev = resolve_device(device, train_x)
    ty, cls, ks_req = _check_args(train_y, classes, temperature, ks)
    with torch.no_grad():
        tx = l2_normalize(as_features(train_x, dev, torch.float32))
        qx_all = as_features(query_x, dev, torch.float32)
        n_t, d = tx.shape
        if n_t == 0:
            raise ValueError("k-NN needs at least one train row")
        ty_idx = torch.as_tensor(np.searchsorted(cls, ty), device=dev, dtype=torch.int64)
        k_eff = [min(k, n_t) for k in ks_req]
        kmax = max([1, *k_eff])
        n_c = cls.size
        per_query = 12 * 3 * kmax + 4 * n_c * 2 + 4 * d  # top-k values/indices (running, block, merged), votes
        plan = plan_chunks(n_t, kmax, budget=memory_budget_bytes, itemsize=4, per_query_bytes=per_query,
                           query_rows=query_chunk, bank_rows=train_chunk)
        m = qx_all.shape[0]
        ranked = {k: np.empty((m, min(TOPK, n_c)), dtype=np.int64) for k in ks_req}
        scores_out = {k: np.empty((m, n_c)) for k in ks_req} if return_scores else None
        max_sim = np.empty(m)
        for a, b, v, i in iter_topk(qx_all, tx, kmax, plan, matmul=matmul, prepare=l2_normalize):
            max_sim[a:b] = v[:, 0].double().cpu().numpy()
            nb_lab = ty_idx[i]
            for k_r, k_e in zip(ks_req, k_eff, strict=True):
                sc = knn_votes(v[:, :k_e], nb_lab[:, :k_e], n_c, temperature)
                ranked[k_r][a:b] = rank(sc, min(TOPK, n_c), drop_zero=True)
                if scores_out is not None:
                    scores_out[k_r][a:b] = sc.double().cpu().numpy()
            progress(min(1.0, b / max(m, 1)), f"k-NN: {b}/{m} queries")
    return KnnResult(k=ks_req, k_effective=k_eff, classes=cls, ranked=ranked, max_similarity=max_sim,
                     query_chunk=plan.query_rows, train_chunk=plan.bank_rows, scores=scores_out)


def max_cosine_similarity(
    train_x: np.ndarray | torch.Tensor, query_x: np.ndarray | torch.Tensor, **kwargs: Any
) -> np.ndarray:
    """max_t ẑ_q · ẑ_t for every query (the open-set k-NN score), chunked as ``weighted_knn``."""
    n_t = int(train_x.shape[0])
    res = weighted_knn(train_x, np.zeros(n_t, dtype=np.int64), query_x, ks=(1,), **kwargs)
    return res.max_similarity
