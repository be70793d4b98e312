"""Embed a fixed probe set every N steps and log it: the part every framework integration shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from repscope.client import RunHandle, Upload


def _default_embed(model: Any, batch: Any) -> Any:
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    if hasattr(out, "last_hidden_state"):  # transformers: the first token of the last layer
        return out.last_hidden_state[:, 0]
    if isinstance(out, tuple | list):
        return out[0]
    return out


class ProbeSetLogger:
    """Every `every_n_steps` steps: put the model in eval mode, embed the probe batches with
    `embed_fn(model, batch)` (default: the model's output, a transformer's first token), restore train mode,
    and log the embeddings (with `labels`, so the probe suite runs) through the run's background uploader.

    probe_batches -- a list of model inputs (tensors, or dicts of tensors for transformers), already on the
                     model's device or moved there by `embed_fn`; they are never shuffled, so steps compare.
    """

    def __init__(self, run: RunHandle, probe_batches: Sequence[Any], *, labels: Any = None, every_n_steps: int = 1000,
                 embed_fn: Callable[[Any, Any], Any] | None = None, dataset: str | None = None,
                 suites: Sequence[str] | None = None, log_at_start: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.run, self.probe_batches, self.labels = run, list(probe_batches), labels
        self.every_n_steps, self.embed_fn = every_n_steps, embed_fn or _default_embed
        self.dataset, self.suites, self.log_at_start = dataset, suites, log_at_start
        self.logged_steps: list[int] = []
        self.uploads: list[Upload] = []

    def due(self, step: int) -> bool:
        if step in self.logged_steps:
            return False
        return step % self.every_n_steps == 0 and (step > 0 or self.log_at_start)

    def embed(self, model: Any) -> Any:
        import torch

        was_training = getattr(model, "training", False)
        model.eval()
        try:
            with torch.no_grad():
                parts = [self.embed_fn(model, batch).detach().float().cpu() for batch in self.probe_batches]
        finally:
            if was_training:
                model.train()
        return torch.cat(parts)

    def maybe_log(self, step: int, model: Any) -> Upload | None:
        if not self.due(step):
            return None
        upload = self.run.log_embeddings(step, self.embed(model), labels=self.labels, dataset=self.dataset,
                                         suites=self.suites)
        self.logged_steps.append(step)
        self.uploads.append(upload)
        return upload
