"""Cosine k-NN over embeddings: the weighted k-NN classifier behind the attack-success score, and the k-NN
density of the pool scan. Both run on ``worker.suites.common.topk`` under SIMILARITY_BUDGET bytes per block.

The classifier is DINO's weighted k-NN (Caron et al., ICCV 2021, ``eval_knn.py``): k = 20, weights
exp(cos / 0.07), arg-max class. The density is the mean cosine to the k nearest other rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worker.suites.common.arrays import check_finite, l2_normalize, matrix_shape, to_tensor
from worker.suites.common.budget import MEMORY_BUDGET
from worker.suites.common.device import resolve_device
from worker.suites.common.topk import KNN_TEMPERATURE, iter_topk, plan_chunks
from worker.suites.common.topk import knn_predict as weighted_knn_predict

KNN_K = 20  # neighbours of the attack-success classifier (DINO's k)
POOL_K = 20  # neighbours of the pool scan's k-NN density
SIMILARITY_BUDGET = MEMORY_BUDGET // 2  # bytes per similarity block (k-NN, k-means distances)


def as_rows(embeddings: Any, device: torch.device) -> torch.Tensor:
    """Embeddings (array or tensor) as a finite float32 N×D tensor on `device`; ValueError otherwise."""
    z = to_tensor(embeddings, device, torch.float32)
    matrix_shape(z)
    check_finite(z)
    return z


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = KNN_K,
                temperature: float = KNN_TEMPERATURE) -> torch.Tensor:  # fmt: skip
    """DINO's weighted k-NN: cosine similarity, top-k bank rows, class score Σ exp(cos / T); arg-max class.

    bank_labels are class indices 0..K−1; ties go to the lower class index. float64 similarities."""
    return weighted_knn_predict(bank, bank_labels, queries, k, temperature=temperature, budget=SIMILARITY_BUDGET)


def knn_density(embeddings: np.ndarray | torch.Tensor, k: int = POOL_K, *,
                device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """Mean cosine similarity of each row to its k nearest other rows (self excluded, duplicates kept):

        d_i = (1/k) Σ_{j ∈ kNN(i)} cos(z_i, z_j),   kNN by cosine, j ≠ i.

    Poisoned samples share the trigger's embedding, so they sit in unusually dense neighbourhoods. float32
    similarities, queries chunked (≤ SIMILARITY_BUDGET bytes per block)."""
    dev = resolve_device(device, embeddings)
    z = l2_normalize(as_rows(embeddings, dev))
    n = z.shape[0]
    if n < 2:
        raise ValueError("k-NN density needs at least 2 rows")
    k = min(k, n - 1)
    plan = plan_chunks(n, k, budget=SIMILARITY_BUDGET, itemsize=4, split_bank=False)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    for a, b, v, _ in iter_topk(z, z, k, plan, exclude_self=True):
        out[a:b] = v.to(torch.float64).mean(dim=1)
    return out.cpu().numpy()
