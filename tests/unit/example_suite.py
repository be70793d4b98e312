"""A tiny suite used by test_suite_registry: the mean L2 norm of the rows (numpy reference: its own formula).

What a real suite's `suite.py` looks like; with one `SuiteSpec` line it runs everywhere (API, engine, CLI)."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.suites.base import ProgressFn, SuiteResult


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    z = np.asarray(arrays.embeddings, dtype=np.float64)
    progress(0.5, "norms")
    return SuiteResult(metrics={"example_mean_norm": float(np.linalg.norm(z, axis=1).mean())},
                       variant={"device": device, "scale": params.get("scale", 1.0)})
