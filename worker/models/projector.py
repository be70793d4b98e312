"""The projector MLP on top of a backbone (``output="projector"``), rebuilt from its weights.

SimCLR, BYOL, VICReg, Barlow Twins and solo-learn write it as an nn.Sequential under ``projector.``:
``Linear -> BatchNorm1d -> ReLU -> ... -> Linear`` (VICReg's last Linear has no bias; Barlow Twins' hidden
ones neither). Each index is read off the weights: a 2-D ``weight`` is a Linear (bias if present), a
``running_mean`` a BatchNorm1d (affine if it has a weight); an index with no tensors is the activation, ReLU
in all of these codebases.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_NAMES = ("projector.",)


class Encoder(nn.Module):
    """A backbone, optionally followed by its projector; forward returns [N, D]."""

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)
        return self.projector(z) if self.projector is not None else z


def projector_prefix(keys: list[str], encoder_prefix: str) -> str | None:
    """Where the projector sits next to the encoder: beside it (``module.backbone.`` -> ``module.projector.``)
    or under the same prefix."""
    parent = encoder_prefix.rstrip(".").rpartition(".")[0]
    options = [f"{parent}.projector." if parent else "projector.", f"{encoder_prefix}projector.", "projector."]
    return next((p for p in options if any(k.startswith(p) for k in keys)), None)


def build_projector(tensors: dict[str, torch.Tensor]) -> nn.Sequential:
    """An nn.Sequential whose state_dict is ``tensors`` (keys "<index>.<param>"), loaded strictly."""
    try:
        indices = {int(k.split(".", 1)[0]) for k in tensors}
    except ValueError:
        raise ValueError(f"projector keys are not an nn.Sequential's: {sorted(tensors)[:6]}") from None
    layers: list[nn.Module] = []
    for i in range(max(indices) + 1):
        weight = tensors.get(f"{i}.weight")
        if f"{i}.running_mean" in tensors:
            layers.append(nn.BatchNorm1d(tensors[f"{i}.running_mean"].shape[0], affine=weight is not None))
        elif weight is not None and weight.ndim == 2:
            layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias=f"{i}.bias" in tensors))
        elif i not in indices:
            layers.append(nn.ReLU())
        else:
            raise ValueError(f"projector layer {i} is neither a Linear nor a BatchNorm1d: "
                             f"{sorted(k for k in tensors if k.startswith(f'{i}.'))}")
    projector = nn.Sequential(*layers)
    projector.load_state_dict(tensors, strict=True)
    return projector.eval()
