"""The projector suite's entry point for the registry (repscope.suites): a 2-D view of an embeddings artifact."""

from __future__ import annotations

from typing import Any

from worker.suites.base import ProgressFn, SuiteResult

from .protocol import project


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """PCA (and UMAP when installed) of a seeded sample of ≤ 20 000 rows, with labels, split, poison flags and
    k-NN density for colouring. params: max_points, seed, projection ('auto' | 'pca' | 'umap'), density,
    umap_n_neighbors, umap_min_dist."""
    return project(arrays.embeddings, labels=arrays.labels, split=arrays.split, poison=arrays.poison,
                   device=device, progress=progress, **params)
