"""The label-free colouring: the k-NN density of each drawn row, the score of the backdoor pool scan
(worker.suites.backdoor.knn.knn_density, restated here because a suite imports no other suite; the unit test
checks the two agree):

    d_i = (1/k) Σ_{j ∈ kNN(i)} cos(z_i, z_j),   k = 20, kNN by cosine among the drawn rows, j ≠ i.

Planted (poisoned) samples share the trigger's embedding, so they sit in unusually dense neighbourhoods. On a
subsample the neighbours are those of the sample, so with more than 20 000 rows the values are the sample's,
not the pool scan's numbers over every row.
"""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.common.arrays import l2_normalize, matrix_shape, to_tensor
from worker.suites.common.budget import MEMORY_BUDGET
from worker.suites.common.device import resolve_device
from worker.suites.common.topk import iter_topk, plan_chunks

DENSITY_K = 20  # the pool scan's POOL_K
SIMILARITY_BUDGET = MEMORY_BUDGET // 2  # bytes per similarity block, as the pool scan


def knn_density(x: np.ndarray | torch.Tensor, k: int = DENSITY_K, *,
                device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """Mean cosine similarity of each row to its k nearest other rows (float32 similarities, float64 mean)."""
    n, _ = matrix_shape(x, real=True)
    if n < 2:
        raise ValueError("k-NN density needs at least 2 rows")
    dev = resolve_device(device, x)
    z = l2_normalize(to_tensor(x, dev, torch.float32))
    k = min(int(k), n - 1)
    plan = plan_chunks(n, k, budget=SIMILARITY_BUDGET, itemsize=4, split_bank=False)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    for a, b, v, _ in iter_topk(z, z, k, plan, exclude_self=True):
        out[a:b] = v.to(torch.float64).mean(dim=1)
    return out.cpu().numpy()
