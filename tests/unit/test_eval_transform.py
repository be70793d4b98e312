"""The per-image eval transform equals torchvision's classic ImageNet evaluation on the same PIL images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as classic

from worker.datasets.eval_transform import pil_transform
from worker.datasets.preprocessing import Preprocessing, apply

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def jpeg_images(n: int = 4) -> list[Image.Image]:
    """Decoded JPEGs of several sizes and aspect ratios (and one greyscale), decoded once for both paths."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(375, 500), (500, 333), (256, 256), (90, 120)][:n]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr = (arr // 32 * 32 + np.linspace(0, 31, w, dtype=np.uint8)[None, :, None]).astype(np.uint8)
        img = Image.fromarray(arr[..., 0] if i == 3 else arr)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(Image.open(io.BytesIO(buf.getvalue())).copy())
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_matches_torchvision_resize_256_center_crop_224(interpolation):
    prep = Preprocessing.from_crop_pct(224, 0.875, interpolation, MEAN, STD, "timm defaults")
    assert (prep.resize, prep.crop) == (256, (224, 224))
    mode = {"bilinear": classic.InterpolationMode.BILINEAR, "bicubic": classic.InterpolationMode.BICUBIC}
    reference = classic.Compose([classic.Resize(256, interpolation=mode[interpolation]), classic.CenterCrop(224),
                                 classic.ToTensor(), classic.Normalize(MEAN, STD)])
    ours = pil_transform(prep)
    for img in jpeg_images():
        want = reference(img.convert("RGB"))
        got = ours(img)
        assert got.shape == (3, 224, 224) and got.dtype == torch.float32
        assert float((got - want).abs().max()) <= 1e-6


def test_tensor_path_differs_only_by_pil_rounding():
    """apply() on the same decoded pixels (float resize) stays within 1/255 of PIL's uint8 resize, pre-normalise."""
    prep = Preprocessing(crop=(224, 224), resize=256, mean=(0, 0, 0), std=(1, 1, 1))
    for img in jpeg_images(3):
        x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        diff = (apply(x, prep)[0] - pil_transform(prep)(img)).abs()
        assert float(diff.mean()) < 1 / 255 and float(diff.max()) < 0.1
