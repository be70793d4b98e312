"""PyTorch Lightning callback: log a fixed probe set's embeddings every N optimizer steps."""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from repscope.client import RunHandle
from repscope.integrations.probe import ProbeSetLogger


class RepscopeCallback(Callback):
    """    trainer = L.Trainer(callbacks=[RepscopeCallback(run, [x_probe], labels=y_probe, every_n_steps=500)])

    `embed_fn(pl_module, batch)` defaults to `pl_module(batch)`; the probe batches are moved to the module's
    device. Logs at step 0 and every `every_n_steps` global steps, and once more when training ends."""

    def __init__(self, run: RunHandle, probe_batches: Any, **kwargs: Any) -> None:
        super().__init__()
        self.logger = ProbeSetLogger(run, probe_batches, **kwargs)

    def _log(self, trainer: Any, pl_module: Any, force: bool = False) -> None:
        if trainer.global_rank != 0:  # one process logs
            return
        step = int(trainer.global_step)
        self.logger.probe_batches = [b.to(pl_module.device) if hasattr(b, "to") else b
                                     for b in self.logger.probe_batches]
        if force and step not in self.logger.logged_steps:
            every, self.logger.every_n_steps = self.logger.every_n_steps, 1
            self.logger.maybe_log(step, pl_module)
            self.logger.every_n_steps = every
        else:
            self.logger.maybe_log(step, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self._log(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._log(trainer, pl_module, force=True)
        self.logger.run.flush()
