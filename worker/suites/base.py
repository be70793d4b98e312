"""What every suite returns: flat metrics for charts, figure data for pages, and the variant that ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.suites.common.device import resolve_device  # noqa: F401  (re-exported for the suites)

# progress(fraction in [0, 1], short message) — suites call it on long work; the task forwards it to the API.
ProgressFn = Callable[[float, str], None]
# encode(images float NCHW in [0, 1] on the device) -> features (N x D): the encoder suites' view of a model.
EncodeFn = Callable[[torch.Tensor], torch.Tensor]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001
    """Default progress sink for notebook and CLI use."""


@dataclass
class SuiteResult:
    """Output of a suite: JSON-serialisable, nothing else.

    metrics  -- flat {key: float}; these become Metric rows (run, step, key, value).
    figures  -- bulky figure data (spectra, curves); stored in the evaluation's result JSON.
    variant  -- which variant ran (centring, subsample size and seed, dtype path, device...).
    warnings -- things the user must know to read the numbers (e.g. N < D caps RankMe).
    """

    metrics: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)
    variant: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "figures": self.figures,
            "variant": self.variant,
            "warnings": list(self.warnings),
        }
