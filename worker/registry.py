"""Which function runs each suite. Adapters turn loaded arrays + evaluation params into a suite call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repscope.formats import EmbeddingsArrays
from worker.suites.base import ProgressFn, SuiteResult

SuiteRunner = Callable[[EmbeddingsArrays, dict[str, Any], str, ProgressFn], SuiteResult]


def _spectrum(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """Spectrum metrics; LiDAR too when the file carries q augmented views per row (checkpoint path)."""
    from worker.suites.spectrum import LIDAR_DELTA, LIDAR_EPS, lidar, run_spectrum

    result = run_spectrum(arrays.embeddings, device=device, progress=progress, **params)
    if arrays.views is not None:
        result.metrics["lidar"] = lidar(arrays.views, device=device)
        n, q, _ = arrays.views.shape
        result.variant["lidar"] = (f"Thilak et al. 2023 on {n} samples x {q} augmented views, "
                                   f"delta {LIDAR_DELTA:g}, eps {LIDAR_EPS:g}")
    return result


def _probes(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    from worker.suites.probes import run_probes

    if arrays.labels is None:
        raise ValueError("the probes suite needs labels; this artifact has none")
    return run_probes(arrays.embeddings, arrays.labels, split=arrays.split, device=device, progress=progress,
                      **params)


SUITES: dict[str, SuiteRunner] = {"spectrum": _spectrum, "probes": _probes}
