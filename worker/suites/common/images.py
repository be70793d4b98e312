"""uint8 images -> float tensors in [0, 1], and Rec. 601 luma.

Images travel as uint8 N×H×W×C (C = 1 or 3, 4x fewer bytes than float) and become float N×C×H×W in [0, 1]
on the device, the layout encoders take. Luma weights are Rec. 601, as
torchvision.transforms.functional.rgb_to_grayscale.
"""

from __future__ import annotations

import numpy as np
import torch

LUMA = (0.299, 0.587, 0.114)


def to_float(batch_u8: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """uint8 N×H×W×C -> float32 N×C×H×W in [0, 1] (x / 255) on the batch's device; grey (C = 1) is expanded
    to `channels` when given (a view, no copy)."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    if channels is not None and x.shape[1] == 1 and channels != 1:
        x = x.expand(-1, channels, -1, -1)
    return x


def to_float_images(images: np.ndarray, device: torch.device, channels: int | None = None) -> torch.Tensor:
    """uint8 N×H×W×C numpy -> ``to_float`` on `device` (the uint8 bytes are moved, then converted there)."""
    return to_float(torch.from_numpy(np.ascontiguousarray(images)).to(device), channels)


def center_square(batch_u8: torch.Tensor) -> torch.Tensor:
    """The centred s×s crop of N×H×W×C images, s = min(H, W) (top / left offsets rounded down); a view."""
    _, h, w, _ = batch_u8.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return batch_u8[:, top : top + s, left : left + s]


def to_square_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×C (C = 1 or 3) -> float N×3×s×s in [0, 1], centre-cropped to s = min(H, W)."""
    return to_float(center_square(images_u8), 3)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma N×1×H×W of RGB float images N×3×H×W."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)
