"""The model's eval transform on decoded PIL images, for per-image decoding (a DataLoader's workers): the same
operations torchvision users write — ``Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize`` — built from
a Preprocessing (worker/datasets/preprocessing.py: timm pretrained_cfg, torchvision weights' transforms, HF
processor config or upload overrides), with PIL doing the resize on uint8 as torchvision does on PIL images.

``worker.datasets.preprocessing.apply`` is the same pipeline on float tensors already on the device (for images
held as one uint8 array); the two differ only by PIL's uint8 rounding inside the resize (≤ 1/255 before
normalisation). Images are converted to RGB first, as torchvision's ImageFolder loader does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .preprocessing import Preprocessing


def pil_transform(prep: Preprocessing) -> Callable[[object], torch.Tensor]:
    """PIL image -> normalised float32 C x H x W tensor, per ``prep`` (resize, crop, interpolation, mean, std)."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import InterpolationMode

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[prep.interpolation]
    steps: list[Callable] = [_to_rgb]
    if prep.resize is not None:
        steps.append(v2.Resize(prep.resize if isinstance(prep.resize, int) else list(prep.resize),
                               interpolation=mode, antialias=True))
    if prep.crop is not None:
        steps.append(v2.CenterCrop(list(prep.crop)))
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(prep.mean), list(prep.std))]
    return v2.Compose(steps)


def _to_rgb(img):  # noqa: ANN001, ANN202 - PIL.Image in and out
    return img if img.mode == "RGB" else img.convert("RGB")
