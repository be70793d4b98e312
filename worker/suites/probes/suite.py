"""The probes suite's entry point for the registry (repscope.suites)."""

from __future__ import annotations

from typing import Any

from worker.suites.base import ProgressFn, SuiteResult


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    from worker.suites.probes import run_probes

    if arrays.labels is None:
        raise ValueError("the probes suite needs labels; this artifact has none")
    return run_probes(arrays.embeddings, arrays.labels, split=arrays.split, device=device, progress=progress,
                      **params)
