"""One feature vector per image from whatever a module's forward returns.

Accepted outputs: a tensor; a tuple / list (first element, e.g. timm ``forward_intermediates`` or
HuggingFace-style tuples); a dict (first key of DICT_KEYS present, DINOv2 ``forward_features`` uses
``x_norm_clstoken``). The tensor is then reduced to [N, D]:
  * [N, D]           as is
  * [N, T, D] tokens pool="cls": token 0; pool="mean": mean of tokens 1.. (the patch tokens)
  * [N, C, H, W] map global average pool (a conv trunk without its pooling layer)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

POOLS = ("cls", "mean")
DICT_KEYS = (
    "x_norm_clstoken", "features", "feats", "embeddings", "embedding", "pooler_output",
    "image_embeds", "last_hidden_state", "x_prenorm", "out",
)  # fmt: skip


def first_tensor(out: Any) -> torch.Tensor:
    """The feature tensor inside a module output (tensor, tuple/list, dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    if isinstance(out, dict):
        for key in DICT_KEYS:
            if key in out:
                return first_tensor(out[key])
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if tensors:
            return tensors[0]
        raise TypeError(f"model returned a dict without a feature tensor (keys: {sorted(map(str, out))})")
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, tuple or dict of tensors")


def pool_features(z: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """Reduce a feature tensor to [N, D] (see module docstring)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if z.ndim == 2:
        return z
    if z.ndim == 3:
        return z[:, 0] if pool == "cls" or z.shape[1] == 1 else z[:, 1:].mean(dim=1)
    if z.ndim == 4:
        return z.mean(dim=(2, 3))
    if z.ndim == 1:
        return z[:, None]
    return z.flatten(1)


def encode(module: nn.Module, images: torch.Tensor, *, pool: str = "cls") -> torch.Tensor:
    """Features [N, D] of a float NCHW batch (already resized and normalised) from any supported module."""
    return pool_features(first_tensor(module(images)), pool)
