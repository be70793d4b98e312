"""The spectrum suite's entry point for the registry (repscope.suites)."""

from __future__ import annotations

from typing import Any

from worker.suites.base import ProgressFn, SuiteResult


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """Spectrum metrics; LiDAR too when the file carries q augmented views per row (checkpoint path)."""
    from worker.suites.spectrum import LIDAR_DELTA, LIDAR_EPS, lidar, run_spectrum

    result = run_spectrum(arrays.embeddings, device=device, progress=progress, **params)
    if arrays.views is not None:
        result.metrics["lidar"] = lidar(arrays.views, device=device)
        n, q, _ = arrays.views.shape
        result.variant["lidar"] = (f"Thilak et al. 2023 on {n} samples x {q} augmented views, "
                                   f"delta {LIDAR_DELTA:g}, eps {LIDAR_EPS:g}")
    return result
