"""The projector's protocol: draw a seeded sample, project it to 2-D, attach what the page colours by.

1. Sample: every row when N ≤ max_points (≤ MAX_POINTS = 20 000, issue #20: "bounded: ≤ 20 000 points drawn
   with WebGL"), else the sorted ``np.random.default_rng(seed).choice(N, max_points, replace=False)``
   (worker.suites.common.sampling.subsample_rows); the figure records which rows.
2. PCA (always, exact: worker.suites.projector.pca) with its explained variance ratios.
3. UMAP (umap-learn, n_neighbors 15, min_dist 0.1, random_state = seed): projection "umap" asks for it;
   "auto" (the default) runs it when umap-learn is installed and the sample has ≤ UMAP_AUTO_MAX rows; "pca"
   never. Asked for but not installed: PCA only, with a warning.
4. Colourings: the labels, split and poison flags of the drawn rows when the file has them, and the k-NN
   density (worker.suites.projector.density) unless density=False.

Coordinates and densities are stored rounded to 4 significant digits of the array's largest magnitude (a
resolution of 1/10 000 of the plot's range, finer than a pixel), so the figure stays ≤ about 60 bytes a row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from worker.suites.base import ProgressFn, SuiteResult, no_progress
from worker.suites.common.arrays import matrix_shape
from worker.suites.common.rows import take_rows
from worker.suites.common.sampling import subsample_rows

from .density import DENSITY_K, knn_density
from .pca import pca_2d
from .umap2d import MIN_DIST, MIN_ROWS, N_NEIGHBORS, umap_2d, umap_available

MAX_POINTS = 20_000  # issue #20: at most 20 000 points drawn (WebGL)
SEED = 0
# umap-learn finds exact neighbours below 4 096 rows and switches to NN-descent above (a further numba
# compile): on a 2-core CPU a 2 000-row sample took 6 s once compiled (the first call of a process adds about
# 15 s of compilation), a 5 000-row one 54 s. "auto" keeps UMAP under this size; projection="umap" lifts it.
UMAP_AUTO_MAX = 4_000
PROJECTIONS = ("auto", "pca", "umap")
SIGNIFICANT = 4
METRIC_PCA_VARIANCE = "projector_pca_variance"


def compact(values: np.ndarray, significant: int = SIGNIFICANT) -> list[float]:
    """Finite values rounded to `significant` digits of the largest magnitude among them, as JSON floats:
    decimals = significant − 1 − ⌊log₁₀ max|v|⌋ (all zeros stay zeros)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    top = float(np.max(np.abs(v))) if v.size else 0.0
    if top == 0.0:
        return [0.0] * v.size
    decimals = significant - 1 - math.floor(math.log10(top))
    return [float(x) for x in np.round(v, decimals)]


def _ints(values: np.ndarray | None, rows: np.ndarray | None) -> list[int] | None:
    if values is None:
        return None
    v = np.asarray(values).ravel()
    return [int(x) for x in (v if rows is None else v[rows])]


def _umap_skipped(projection: str, rows: int) -> str | None:
    """Why UMAP does not run on `rows` drawn rows (None: it runs)."""
    if projection == "pca":
        return "not asked for (projection='pca')"
    if not umap_available():
        return "umap-learn is not installed (pip install 'repscope[projector]')"
    if rows < MIN_ROWS:
        return f"skipped: it needs at least {MIN_ROWS} rows"
    if projection == "auto" and rows > UMAP_AUTO_MAX:
        return f"skipped: {rows} rows > {UMAP_AUTO_MAX} (projection='umap' runs it)"
    return None


def project(embeddings: np.ndarray, labels: np.ndarray | None = None, split: np.ndarray | None = None,
            poison: np.ndarray | None = None, *, max_points: int = MAX_POINTS, seed: int = SEED,
            projection: str = "auto", density: bool = True, umap_n_neighbors: int = N_NEIGHBORS,
            umap_min_dist: float = MIN_DIST, device: str | None = None,
            progress: ProgressFn = no_progress) -> SuiteResult:  # fmt: skip
    """The projector's figure data for an N × D embeddings matrix (see the module docstring)."""
    n, d = matrix_shape(embeddings, real=True)
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if not 2 <= int(max_points) <= MAX_POINTS:
        raise ValueError(f"max_points must lie in [2, {MAX_POINTS}], got {max_points}")
    if n < 2:
        raise ValueError("the projector needs at least 2 rows")
    for name, values in (("labels", labels), ("split", split), ("poison", poison)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} rows")
    warnings: list[str] = []
    progress(0.0, "sampling rows")
    rows = subsample_rows(n, int(max_points), int(seed))
    arr = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)  # a memmap stays one
    x = arr if rows is None else take_rows(arr, rows)
    m = int(x.shape[0])
    progress(0.1, f"PCA of {m} x {d}")
    pca = pca_2d(x, device=device)
    projections: dict[str, Any] = {"pca": {
        "x": compact(pca.coords[:, 0]), "y": compact(pca.coords[:, 1]),
        "explained_variance_ratio": [float(r) for r in pca.explained_variance_ratio]}}
    if float(pca.explained_variance_ratio.sum()) == 0.0:
        warnings.append("every drawn row is the same point (zero variance): the PCA plot is a single dot")
    variant: dict[str, Any] = {"n_rows": n, "sample": m, "max_points": int(max_points), "seed": int(seed),
                               "sampled": rows is not None, "projection": projection, "pca": "exact, float64"}
    skipped = _umap_skipped(projection, m)
    if skipped is None:
        progress(0.3, f"UMAP of {m} rows")
        try:
            coords = umap_2d(x, seed=int(seed), n_neighbors=umap_n_neighbors, min_dist=umap_min_dist)
            projections["umap"] = {"x": compact(coords[:, 0]), "y": compact(coords[:, 1]), "seed": int(seed),
                                   "n_neighbors": min(int(umap_n_neighbors), m - 1), "min_dist": float(umap_min_dist)}
        except Exception as exc:  # noqa: BLE001 - an optional view: a broken umap-learn / numba keeps the PCA
            skipped = f"failed ({type(exc).__name__}: {exc})"
            warnings.append(f"UMAP {skipped}; PCA only")
    elif projection == "umap":
        warnings.append(f"UMAP was asked for but {skipped}; PCA only")
    variant["umap"] = "umap-learn" if skipped is None else skipped
    figures: dict[str, Any] = {"n_rows": n, "rows": list(range(n)) if rows is None else [int(r) for r in rows],
                               "seed": int(seed), "projections": projections}
    for name, values in (("labels", labels), ("split", split), ("poison", poison)):
        if values is not None:
            figures[name] = _ints(values, rows)
    if density:
        progress(0.8, "k-NN density")
        figures["density"] = compact(knn_density(x, DENSITY_K, device=device))
        figures["density_k"] = min(DENSITY_K, m - 1)
    progress(1.0, "done")
    return SuiteResult(metrics={METRIC_PCA_VARIANCE: float(pca.explained_variance_ratio.sum())},
                       figures=figures, variant=variant, warnings=warnings)
