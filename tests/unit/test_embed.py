"""embed(): equals the model's forward on independently preprocessed images, batch-size invariant, seeded views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF

from repscope.cache import PREPROCESSING_VERSION
from worker.datasets.preprocessing import Preprocessing
from worker.embed import embed, embed_precision, preprocessing_key, preprocessing_spec, resolve_preprocessing

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.fc = torch.nn.Identity()
    return net.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (23, 24, 24, 3), dtype=np.uint8)


def test_embed_equals_forward_on_reference_preprocessing(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = model((x - MEAN) / STD)
    z = embed(model, images, image_size=32, batch_size=8, device="cpu")
    assert z.dtype == np.float32 and z.shape == (23, 512)
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
    assert a.shape == (23, 4, 512)
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
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    v = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                          embed_dim=32, depth=1, num_heads=2).eval()  # fmt: skip
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    with torch.no_grad():
        tokens = v.forward_features(x)

    class Tokens(torch.nn.Module):  # an encoder returning all tokens, like a traced ViT trunk
        def forward(self, inp):
            return v.forward_features(inp)

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
    assert base == preprocessing_key() and base.startswith(f"pp{PREPROCESSING_VERSION}-") and len(base) == 20
    assert preprocessing_key(seed=9) == base  # the seed only matters with views
    variants = [preprocessing_key(image_size=224), preprocessing_key(views=4), preprocessing_key(views=4, seed=1),
                preprocessing_key(precision="bf16-autocast"), preprocessing_key(pool="mean"),
                preprocessing_key(output="projector"), preprocessing_key(mean=(0.5, 0.5, 0.5))]  # fmt: skip
    assert len({base, *variants}) == 1 + len(variants)
    assert preprocessing_spec(image_size=224)["image_size"] == [224, 224]
    assert embed_precision("cpu") == "fp32" and embed_precision("cuda") == "bf16-autocast"
    assert embed_precision("cuda", amp=False) == "fp32"


def reference_features(model, images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """uint8 -> float -> torchvision v2 resize (antialias) / center_crop / normalize -> model, image by image."""
    mode = TF.InterpolationMode.BICUBIC if prep.interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    xs = []
    for img in torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255:
        size = [prep.resize] if isinstance(prep.resize, int) else list(prep.resize)
        img = TF.center_crop(TF.resize(img, size, interpolation=mode, antialias=True), list(prep.crop))
        xs.append(TF.normalize(img, list(prep.mean), list(prep.std)))
    with torch.no_grad():
        return model(torch.stack(xs))


@pytest.fixture(scope="module")
def wide_images() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (9, 30, 45, 3), dtype=np.uint8)


def test_embed_applies_given_preprocessing(model, wide_images):
    prep = Preprocessing(
        crop=(28, 36), resize=40, interpolation="bicubic", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)
    )
    z = embed(model, wide_images, preprocessing=prep, batch_size=4, device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(z), reference_features(model, wide_images, prep), atol=1e-5, rtol=1e-5
    )


def test_loaded_encoder_preprocessing_is_the_default(model, wide_images):
    from worker.models import LoadedEncoder, LoadReport

    prep = Preprocessing.from_crop_pct(32, 0.8, "bilinear", (0.5,) * 3, (0.25,) * 3)  # resize 40, crop 32
    loaded = LoadedEncoder(model, LoadReport(), "state_dict", "resnet18", preprocessing=prep)
    assert resolve_preprocessing(loaded) is prep
    z = embed(loaded, wide_images, device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(z), reference_features(model, wide_images, prep), atol=1e-5, rtol=1e-5
    )
    # the legacy keywords override it: image_size is the new crop (resize rescaled by crop_pct), mean replaced
    over = resolve_preprocessing(loaded, image_size=24, mean=(0.1, 0.2, 0.3))
    assert (over.crop, over.resize, over.mean, over.std) == ((24, 24), 30, (0.1, 0.2, 0.3), (0.25,) * 3)
    z = embed(loaded, wide_images, image_size=24, mean=(0.1, 0.2, 0.3), device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(z), reference_features(model, wide_images, over), atol=1e-5, rtol=1e-5
    )
    explicit = Preprocessing(crop=(20, 20), resize=22)
    assert resolve_preprocessing(loaded, explicit) is explicit


def test_views_are_augmented_at_the_crop_size(wide_images):
    sizes = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            sizes.append(tuple(x.shape[1:]))
            return x.mean(dim=(2, 3))

    prep = Preprocessing(crop=(16, 20), resize=24)
    z = embed(Probe(), wide_images, preprocessing=prep, views=3, seed=1, device="cpu")
    assert z.shape == (9, 3, 3) and set(sizes) == {(3, 16, 20)}
    sizes.clear()
    embed(Probe(), wide_images, views=2, device="cpu")  # no preprocessing: the images' own size
    assert set(sizes) == {(3, 30, 45)}


def test_preprocessing_spec_records_the_preprocessing():
    prep = Preprocessing.from_crop_pct((3, 224, 224), 0.9, "bicubic", (0.5,) * 3, (0.5,) * 3)
    spec = preprocessing_spec(preprocessing=prep, views=2, pool="mean")
    assert spec["preprocessing"] == prep.to_json() and spec["views"] == 2 and "seed" in spec
    assert "image_size" not in spec and "mean" not in spec
    over = preprocessing_spec(preprocessing=prep, image_size=160, std=(0.25,) * 3)["preprocessing"]
    assert (over["crop"], over["resize"], over["std"]) == ([160, 160], 177, [0.25] * 3)  # floor(160 / 0.9)
    assert over["source"] == "repscope"
    keys = {preprocessing_key(), preprocessing_key(preprocessing=prep),
            preprocessing_key(preprocessing=prep.with_overrides(interpolation="bilinear")),
            preprocessing_key(preprocessing=prep.with_overrides(crop=196))}  # fmt: skip
    assert len(keys) == 4
