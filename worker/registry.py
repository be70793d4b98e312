"""Which function runs each suite. Adapters turn loaded arrays + evaluation params into a suite call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from repscope.formats import EmbeddingsArrays
from worker.suites.base import ProgressFn, SuiteResult

SuiteRunner = Callable[[EmbeddingsArrays, dict[str, Any], str, ProgressFn], SuiteResult]


def _spectrum(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    """Spectrum metrics; LiDAR too when the file carries q augmented views per row (checkpoint path)."""
    from worker.suites.spectrum import LIDAR_DELTA, LIDAR_EPS, lidar, run_spectrum

    result = run_spectrum(arrays.embeddings, device=device, progress=progress, **params)
    if arrays.views is not None:
        result.metrics["lidar"] = lidar(arrays.views, device=device)
        n, q, _ = arrays.views.shape
        result.variant["lidar"] = (f"Thilak et al. 2023 on {n} samples x {q} augmented views, "
                                   f"delta {LIDAR_DELTA:g}, eps {LIDAR_EPS:g}")
    return result


def _probes(arrays: EmbeddingsArrays, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    from worker.suites.probes import run_probes

    if arrays.labels is None:
        raise ValueError("the probes suite needs labels; this artifact has none")
    return run_probes(arrays.embeddings, arrays.labels, split=arrays.split, device=device, progress=progress,
                      **params)


def _backdoor_pool(arrays: EmbeddingsArrays, params: dict[str, Any], device: str,
                   progress: ProgressFn) -> SuiteResult:
    """The pool scan: which samples of a possibly poisoned unlabeled pool look planted (AUROC with `poison`)."""
    from worker.suites.backdoor import scan_pool

    params = dict(params)
    images = params.pop("images", None)
    result = scan_pool(np.asarray(arrays.embeddings), images=images, poison=arrays.poison, device=device,
                       progress=progress, **params)
    if images is not None:
        score = "spectral" if "spectral" in result.figures["top_suspicious"] else next(
            iter(result.figures["top_suspicious"]))
        top = result.figures["top_suspicious"][score]["indices"][:MONTAGE_SIDE**2]
        result.figures["montage"] = {"score": score, "indices": top, "pixels": montage(images, top)}
    return result


MONTAGE_SIDE = 4  # the 16 most suspicious samples, ranked row by row


def montage(images: np.ndarray, indices: list[int], side: int = MONTAGE_SIDE, cell: int = 48) -> list:
    """The images at `indices` tiled side x side (row-major, most suspicious first), each resized to `cell`
    pixels, as nested uint8 lists (H x W x 3) for the page; empty cells stay black."""
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


SUITES: dict[str, SuiteRunner] = {"spectrum": _spectrum, "probes": _probes, "backdoor": _backdoor_pool}
