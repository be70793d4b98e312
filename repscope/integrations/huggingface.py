"""Hugging Face `transformers` TrainerCallback: log a fixed probe set's embeddings every N steps."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from repscope.client import RunHandle
from repscope.integrations.probe import ProbeSetLogger


class RepscopeTrainerCallback(TrainerCallback):
    """    trainer = Trainer(..., callbacks=[RepscopeTrainerCallback(run, [tokenizer(texts, return_tensors="pt")],
                                                                labels=y, every_n_steps=500)])

    The default `embed_fn(model, batch)` is the first token of `last_hidden_state` (CLS); pass your own for
    mean pooling or a pooler output. Batches are moved to the model's device."""

    def __init__(self, run: RunHandle, probe_batches: Any, **kwargs: Any) -> None:
        self.logger = ProbeSetLogger(run, probe_batches, **kwargs)

    def _move(self, model: Any) -> None:
        device = next(model.parameters()).device
        self.logger.probe_batches = [{k: v.to(device) for k, v in b.items()} if isinstance(b, dict)
                                     else b.to(device) for b in self.logger.probe_batches]

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and state.is_world_process_zero:
            self._move(model)
            self.logger.maybe_log(int(state.global_step), model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and state.is_world_process_zero:
            self.logger.maybe_log(int(state.global_step), model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.logger.run.flush()
