"""Which function runs each suite. Adapters turn loaded arrays + evaluation params into a suite call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repscope.formats import EmbeddingsArrays
from worker.suites.base import ProgressFn, SuiteResult

SuiteRunner = Callable[[EmbeddingsArrays, dict[str, Any], str, ProgressFn], SuiteResult]


def _spectrum(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    from worker.suites.spectrum import run_spectrum

    return run_spectrum(arrays.embeddings, device=device, progress=progress, **params)


def _probes(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    from worker.suites.probes import run_probes

    if arrays.labels is None:
        raise ValueError("the probes suite needs labels; this artifact has none")
    return run_probes(arrays.embeddings, arrays.labels, split=arrays.split, device=device, progress=progress,
                      **params)


SUITES: dict[str, SuiteRunner] = {"spectrum": _spectrum, "probes": _probes}
