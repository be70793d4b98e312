"""UMAP to two dimensions with umap-learn (McInnes, Healy & Melville 2018, arXiv:1802.03426), when installed
(`pip install 'repscope[projector]'`): ``umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed)``, the
library's defaults, Euclidean metric. A fixed random_state makes umap-learn deterministic (and single-threaded).
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np

N_NEIGHBORS = 15  # umap-learn's default
MIN_DIST = 0.1  # umap-learn's default
MIN_ROWS = 4  # below this the neighbour graph is degenerate; the projector keeps PCA only


def umap_available() -> bool:
    """Whether umap-learn can be imported (checked without importing it: the import compiles with numba)."""
    return importlib.util.find_spec("umap") is not None


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = N_NEIGHBORS, min_dist: float = MIN_DIST) -> np.ndarray:
    """The n × 2 UMAP embedding of the rows of `x` (n ≥ MIN_ROWS); n_neighbors is clipped to n − 1."""
    import umap  # optional dependency: umap-learn

    n = int(x.shape[0])
    if n < MIN_ROWS:
        raise ValueError(f"UMAP needs at least {MIN_ROWS} rows, got {n}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(int(n_neighbors), n - 1), min_dist=float(min_dist),
                        random_state=int(seed))
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": the point of the seed
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)), dtype=np.float64)
