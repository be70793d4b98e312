"""What every suite returns: flat metrics for charts, figure data for pages, and the variant that ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# progress(fraction in [0, 1], short message) — suites call it on long work; the task forwards it to the API.
ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001
    """Default progress sink for notebook and CLI use."""


def resolve_device(device: str | torch.device | None, data: Any = None) -> torch.device:
    """The device a suite computes on: the one asked for, else a tensor input's, else CUDA when present."""
    if device is not None:
        return torch.device(device)
    if isinstance(data, torch.Tensor):
        return data.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
