"""Encoder checkpoints: architectures from timm / torchvision / transformers, training codebases' layouts,
strict loading (TorchScript, torch.export, state_dict, safetensors, Hugging Face zips), features."""

from .errors import CheckpointError
from .features import encode
from .loading import FORMATS, LoadedEncoder, detect_checkpoint_format, load_encoder
from .strict import LoadReport

__all__ = ["FORMATS", "CheckpointError", "LoadReport", "LoadedEncoder", "detect_checkpoint_format", "encode",
           "load_encoder"]
