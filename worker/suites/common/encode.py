"""Features of uint8 images through an encoder, a fixed number of images per call, without gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from worker.suites.base import EncodeFn

from .images import to_float

# prepare(uint8 N×H×W×C batch on the device, start, stop) -> the encoder's float input for rows start..stop
PrepareFn = Callable[[torch.Tensor, int, int], torch.Tensor]


@torch.no_grad()
def encode_batched(
    encode: EncodeFn,
    images_u8: np.ndarray | torch.Tensor,
    device: torch.device,
    batch: int,
    *,
    prepare: PrepareFn | None = None,
    dtype: torch.dtype = torch.float64,
    check: bool = False,
) -> torch.Tensor:
    """encode(prepare(images[a:b])) for a = 0, batch, 2·batch, ..., each flattened to rows and concatenated:
    an N×D `dtype` tensor on `device`.

    Each uint8 batch moves to `device` first (numpy or tensor), then ``prepare`` (default
    ``images.to_float``: float N×C×H×W in [0, 1], C kept) runs there. With `check`, an output that is not a
    tensor (TypeError) or has another row count than its batch (ValueError) is refused.
    """
    n = len(images_u8)
    out = []
    for a in range(0, n, batch):
        b = min(n, a + batch)
        part = images_u8[a:b]
        if not isinstance(part, torch.Tensor):
            part = torch.from_numpy(np.ascontiguousarray(part))
        x_u8 = part.to(device)
        z = encode(to_float(x_u8) if prepare is None else prepare(x_u8, a, b))
        if check and not isinstance(z, torch.Tensor):
            raise TypeError(f"encode must return a tensor, got {type(z).__name__}")
        z = z.detach().reshape(z.shape[0], -1)
        if check and z.shape[0] != b - a:
            raise ValueError(f"encode returned {z.shape[0]} rows for a batch of {b - a} images")
        out.append(z.to(device=device, dtype=dtype))
    return torch.cat(out)
