"""The backdoor suite's entry points for the registry (repscope.suites): the pool scan over embeddings (with the
rows' images when the worker has them) and the encoder scan (known triggers, DECREE) inside the sandbox."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.suites.base import EncodeFn, ProgressFn, SuiteResult

from .encoder import scan_encoder
from .pool import scan_pool

MONTAGE_SIDE = 4  # the 16 most suspicious samples, ranked row by row
MONTAGE_CELL = 48  # pixels per montage cell


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """The pool scan: which samples of a possibly poisoned unlabeled pool look planted (AUROC with `poison`)."""
    params = dict(params)
    images = params.pop("images", None)
    result = scan_pool(np.asarray(arrays.embeddings), images=images, poison=arrays.poison, device=device,
                       progress=progress, **params)
    if images is not None:
        score = "combined" if "combined" in result.figures["top_suspicious"] else next(
            iter(result.figures["top_suspicious"]))
        top = result.figures["top_suspicious"][score]["indices"][:MONTAGE_SIDE**2]
        result.figures["montage"] = {"score": score, "indices": top, "pixels": montage(images, top)}
    return result


def on_encoder(encode: EncodeFn, images: np.ndarray, labels: np.ndarray | None, device: str,
               progress: ProgressFn) -> SuiteResult:
    """The encoder scan: known-trigger collapse and DECREE over the dataset's clean images."""
    return scan_encoder(encode, images, labels=labels, device=device, progress=progress)


def montage(images: np.ndarray, indices: list[int], side: int = MONTAGE_SIDE, cell: int = MONTAGE_CELL) -> list:
    """The images at `indices` tiled side x side (row-major, most suspicious first), each resized to `cell`
    pixels (nearest), as nested uint8 lists (H x W x 3) for the page; empty cells stay black."""
    import torch
    import torch.nn.functional as F

    sheet = np.zeros((side * cell, side * cell, 3), dtype=np.uint8)
    for slot, idx in enumerate(indices[: side * side]):
        img = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(2, 0, 1)[None].float()
        if img.shape[1] == 1:
            img = img.expand(1, 3, -1, -1)
        tile = F.interpolate(img, size=(cell, cell), mode="nearest")[0].permute(1, 2, 0).clamp(0, 255)
        r, c = divmod(slot, side)
        sheet[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = tile.round().to(torch.uint8).numpy()
    return sheet.tolist()
