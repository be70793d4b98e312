"""Encoder checkpoints: architectures, loading (TorchScript, torch.export, state_dict + architecture), features."""

from .archs import ARCHS, get_arch
from .features import encode
from .loading import (
    FORMATS,
    CheckpointError,
    LoadedEncoder,
    LoadReport,
    detect_checkpoint_format,
    load_encoder,
)

__all__ = [
    "ARCHS", "FORMATS", "CheckpointError", "LoadReport", "LoadedEncoder",
    "detect_checkpoint_format", "encode", "get_arch", "load_encoder",
]  # fmt: skip
