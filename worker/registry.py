"""Which function runs each suite. Adapters turn loaded arrays + evaluation params into a suite call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

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


def _backdoor_pool(arrays: EmbeddingsArrays, params: dict[str, Any], device: str,
                   progress: ProgressFn) -> SuiteResult:
    """The pool scan: which samples of a possibly poisoned unlabeled pool look planted (AUROC with `poison`)."""
    from worker.suites.backdoor import scan_pool

    return scan_pool(np.asarray(arrays.embeddings), poison=arrays.poison, device=device, progress=progress,
                     **params)


SUITES: dict[str, SuiteRunner] = {"spectrum": _spectrum, "probes": _probes, "backdoor": _backdoor_pool}
