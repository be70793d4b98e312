"""embed(): equals the model's forward on independently preprocessed images, batch-size invariant, seeded views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.embed import embed, embed_precision, preprocessing_key, preprocessing_spec
from worker.models.archs import resnet18_cifar, vit_tiny

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return resnet18_cifar(width=8).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (23, 24, 24, 3), dtype=np.uint8)


def test_embed_equals_forward_on_reference_preprocessing(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = model((x - MEAN) / STD)
    z = embed(model, images, image_size=32, batch_size=8, device="cpu")
    assert z.dtype == np.float32 and z.shape == (23, 64)
    torch.testing.assert_close(torch.from_numpy(z), ref, atol=1e-5, rtol=1e-5)


def test_batch_size_does_not_change_embeddings(model, images):
    a = embed(model, images, batch_size=7, device="cpu")
    b = embed(model, images, batch_size=64, device="cpu")
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=1e-5, rtol=1e-5)


def test_progress_is_reported_per_batch(model, images):
    calls = []
    embed(model, images, batch_size=10, device="cpu", progress=lambda f, m: calls.append((f, m)))
    assert [f for f, _ in calls] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert calls[-1][1] == "embedded 23/23 images"


def test_views_shape_determinism_and_batching(model, images):
    a = embed(model, images, views=4, seed=3, batch_size=12, device="cpu")
    assert a.shape == (23, 4, 64)
    b = embed(model, images, views=4, seed=3, batch_size=64, device="cpu")
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=1e-5, rtol=1e-5)
    c = embed(model, images, views=4, seed=4, batch_size=64, device="cpu")
    assert not np.allclose(a, c)
    assert not np.allclose(a[:, 0], a[:, 1])  # the views of one image differ


def test_grayscale_images_are_repeated_to_rgb(model, images):
    gray = images[..., :1]
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_allclose(embed(model, gray, device="cpu"), embed(model, rgb, device="cpu"), atol=1e-6)


def test_vit_tokens_and_pooling():
    torch.manual_seed(0)
    v = vit_tiny(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=8).eval()
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    with torch.no_grad():
        tokens = v.forward_tokens(x)

    class Tokens(torch.nn.Module):  # an encoder returning all tokens, like a traced ViT trunk
        def forward(self, inp):
            return v.forward_tokens(inp)

    z = embed(Tokens(), imgs, pool="mean", device="cpu")
    torch.testing.assert_close(torch.from_numpy(z), tokens[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    z = embed(Tokens(), imgs, device="cpu")
    torch.testing.assert_close(torch.from_numpy(z), tokens[:, 0], atol=1e-5, rtol=1e-5)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="uint8"):
        embed(model, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no images"):
        embed(model, np.zeros((0, 8, 8, 3), np.uint8))


def test_preprocessing_key_is_stable_and_sensitive():
    base = preprocessing_key()
    assert base == preprocessing_key() and base.startswith("pp1-") and len(base) == 20
    assert preprocessing_key(seed=9) == base  # the seed only matters with views
    variants = [preprocessing_key(image_size=224), preprocessing_key(views=4), preprocessing_key(views=4, seed=1),
                preprocessing_key(precision="bf16-autocast"), preprocessing_key(pool="mean"),
                preprocessing_key(output="projector"), preprocessing_key(mean=(0.5, 0.5, 0.5))]  # fmt: skip
    assert len({base, *variants}) == 1 + len(variants)
    assert preprocessing_spec(image_size=224)["image_size"] == [224, 224]
    assert embed_precision("cpu") == "fp32" and embed_precision("cuda") == "bf16-autocast"
    assert embed_precision("cuda", amp=False) == "fp32"
