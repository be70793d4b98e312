"""The equivariance suite's entry point for the registry (repscope.suites)."""

from __future__ import annotations

import numpy as np

from worker.suites.base import EncodeFn, ProgressFn, SuiteResult


def on_encoder(encode: EncodeFn, images: np.ndarray, labels: np.ndarray | None, device: str,  # noqa: ARG001
               progress: ProgressFn) -> SuiteResult:
    """Invariance and equivariance of the encoder over the dataset's images (labels are not used)."""
    from worker.suites.equivariance import run_equivariance

    return run_equivariance(encode, images, device=device, progress=progress)


