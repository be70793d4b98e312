"""Preprocessing from a model's config: apply() equals torchvision's, timm's and Hugging Face's own eval transforms."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from worker.datasets.preprocessing import Preprocessing, apply, stats

TIMM_MODELS = ("resnet50", "vit_small_patch14_dinov2", "vit_base_patch16_224")
DINOV2_HF = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3,
             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # fmt: skip
MODES = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}


def torchvision_reference(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """The same operations through torchvision.transforms.v2.functional, one image at a time."""
    out = []
    for img in x:
        if prep.resize is not None:
            size = [prep.resize] if isinstance(prep.resize, int) else list(prep.resize)
            img = TF.resize(img, size, interpolation=MODES[prep.interpolation], antialias=True)
        if prep.crop is not None:
            img = TF.center_crop(img, list(prep.crop))
        out.append(TF.normalize(img, list(prep.mean), list(prep.std)))
    return torch.stack(out)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(3, 3, 61, 87, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    "resize, crop",
    [
        (40, (32, 32)),  # shorter side down, square crop
        (96, (80, 72)),  # shorter side up, non-square crop
        ((50, 30), None),  # exact resize (aspect changes), no crop
        ((120, 100), (64, 96)),  # exact resize up, crop
        (None, (38, 56)),  # crop only: offsets 11.5 and 15.5 round up (torchvision), not down
        (24, (32, 30)),  # crop larger than the resized image: zero padding, as torchvision
    ],
)
def test_apply_equals_torchvision(batch, interpolation, resize, crop):
    prep = Preprocessing(crop=crop, resize=resize, interpolation=interpolation, mean=(0.4, 0.5, 0.6),
                         std=(0.2, 0.3, 0.25))  # fmt: skip
    ref = torchvision_reference(batch, prep)
    out = apply(batch, prep)
    assert out.shape == ref.shape and tuple(out.shape[-2:]) == prep.output_size(batch.shape[-2:])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        apply(batch, prep, mean_std=stats(prep), channels_last=True), ref, atol=1e-5, rtol=0
    )


def test_default_is_identity_plus_imagenet_normalisation(batch):
    out = apply(batch, Preprocessing())
    ref = TF.normalize(batch, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


@pytest.fixture(scope="module", params=TIMM_MODELS)
def timm_model(request):
    timm = pytest.importorskip("timm")
    return request.param, timm.create_model(request.param, pretrained=False, num_classes=0)


def test_from_timm_model_equals_timm_eval_transform(timm_model):
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as tv1

    name, model = timm_model
    cfg = resolve_data_config({}, model=model)
    prep = Preprocessing.from_timm_model(model)
    assert prep.source == "timm pretrained_cfg" and prep.crop_pct == cfg["crop_pct"]
    assert (prep.interpolation, prep.mean, prep.std) == (cfg["interpolation"], cfg["mean"], cfg["std"])
    tf = create_transform(**cfg)
    steps = {type(t): t for t in tf.transforms}
    assert prep.resize == steps[tv1.Resize].size  # timm builds Resize(shorter side) for square inputs
    assert list(prep.crop) == list(steps[tv1.CenterCrop].size) == list(cfg["input_size"][1:])
    # timm's pipeline takes float tensors too (MaybeToTensor passes them through)
    x = torch.rand(3, 230, 301, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(apply(x[None], prep)[0], tf(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_from_crop_pct_follows_timm(crop_mode):
    from timm.data import create_transform

    size = (3, 224, 224) if crop_mode == "center" else (3, 192, 256)
    cfg = {"input_size": size, "crop_pct": 0.9, "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3),
           "std": (0.2, 0.3, 0.4), "crop_mode": crop_mode}  # fmt: skip
    prep = Preprocessing.from_crop_pct(size, 0.9, "bilinear", cfg["mean"], cfg["std"], crop_mode=crop_mode)
    x = torch.rand(3, 200, 330, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(apply(x[None], prep)[0], create_transform(**cfg)(x), atol=1e-5, rtol=0)
    assert Preprocessing.from_crop_pct(224).resize == 256  # timm's default crop_pct 0.875


def test_with_overrides_crop_rescales_resize_like_timm():
    from timm.data import create_transform
    from torchvision import transforms as tv1

    prep = Preprocessing.from_crop_pct((3, 224, 224), 0.9, "bicubic", (0.5,) * 3, (0.5,) * 3)
    new = prep.with_overrides(crop=384)
    tf = create_transform(input_size=(3, 384, 384), crop_pct=0.9, interpolation="bicubic")
    assert new.resize == next(t.size for t in tf.transforms if isinstance(t, tv1.Resize)) == 426
    assert new.crop == (384, 384) and new.source == "repscope" and new.mean == (0.5,) * 3
    both = prep.with_overrides(
        crop=100, resize=120, mean=(0.1, 0.2, 0.3), std=[1, 2, 3], interpolation="bilinear"
    )
    assert (both.crop, both.resize, both.crop_pct, both.interpolation) == ((100, 100), 120, None, "bilinear")
    assert (both.mean, both.std) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert both.with_overrides(crop=50).resize == 60  # no crop_pct any more: the fraction 120 / 100 is kept
    vit_hf = Preprocessing(resize=(224, 224))  # HF ViT: an exact resize to the network input
    assert vit_hf.with_overrides(crop=384).resize == (384, 384)
    hf_dinov2 = Preprocessing.from_hf_processor_config(DINOV2_HF)  # no crop_pct: its own fraction 256 / 224
    assert (
        hf_dinov2.with_overrides(crop=518).resize == 592 and hf_dinov2.with_overrides(crop=196).resize == 224
    )
    assert Preprocessing(crop=(32, 32), resize=32).with_overrides(crop=64).resize == 64
    squash = Preprocessing(crop=(20, 30), resize=(40, 45)).with_overrides(crop=(10, 60))
    assert squash.resize == (20, 90) and Preprocessing(resize=48).with_overrides(crop=40).resize == 48
    assert prep.with_overrides() is prep


def test_to_json_is_plain_and_complete():
    prep = Preprocessing.from_crop_pct(224, 0.95)
    d = prep.to_json()
    assert set(d) == {f.name for f in dataclasses.fields(Preprocessing)}
    assert json.loads(json.dumps(d)) == d
    assert Preprocessing.from_json(json.loads(json.dumps(d))) == prep
    assert prep.input_size == (224, 224) and Preprocessing(resize=(30, 40)).input_size == (30, 40)
    assert Preprocessing(resize=64).input_size is None and Preprocessing().input_size is None
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        Preprocessing.from_json({**d, "size": 3})
    assert d == {"crop": [224, 224], "resize": 235, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "source": "timm pretrained_cfg", "crop_pct": 0.95}  # fmt: skip


def hf_output(processor, x: torch.Tensor) -> torch.Tensor:
    """The processor's own output on a float image in [0, 1] (no uint8 rounding or clamping)."""
    return processor(images=x, do_rescale=False, return_tensors="pt")["pixel_values"][0]


def test_from_hf_vit_processor():
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor()
    prep = Preprocessing.from_hf_processor_config(proc.to_dict())
    assert (prep.resize, prep.crop, prep.interpolation) == ((224, 224), None, "bilinear")
    assert prep.mean == prep.std == (0.5, 0.5, 0.5) and prep.source == "hf preprocessor_config.json"
    x = torch.rand(3, 150, 260, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(apply(x[None], prep)[0], hf_output(proc, x), atol=1e-5, rtol=0)


def test_from_hf_bit_processor_dinov2():
    from transformers import BitImageProcessor

    proc = BitImageProcessor(**DINOV2_HF)
    prep = Preprocessing.from_hf_processor_config(json.loads(proc.to_json_string()))
    assert (prep.resize, prep.crop, prep.interpolation) == (256, (224, 224), "bicubic")
    assert prep.mean == tuple(DINOV2_HF["image_mean"]) and prep.std == tuple(DINOV2_HF["image_std"])
    x = torch.rand(3, 300, 410, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(apply(x[None], prep)[0], hf_output(proc, x), atol=1e-5, rtol=0)


def test_from_hf_convnext_crop_pct_and_rescale():
    from transformers import ConvNextImageProcessor

    x = torch.rand(3, 250, 190, generator=torch.Generator().manual_seed(5))
    proc = ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    prep = Preprocessing.from_hf_processor_config(proc.to_dict())
    assert (prep.resize, prep.crop) == (256, (224, 224))
    torch.testing.assert_close(apply(x[None], prep)[0], hf_output(proc, x), atol=1e-5, rtol=0)
    # a model fed 0..255 (do_rescale false): the scale is folded into mean / std
    raw = ConvNextImageProcessor(size={"shortest_edge": 384}, do_rescale=False)
    prep = Preprocessing.from_hf_processor_config(raw.to_dict())
    assert (prep.resize, prep.crop) == ((384, 384), None)
    torch.testing.assert_close(apply(x[None], prep)[0], hf_output(raw, x * 255), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Preprocessing(interpolation="nearest"), "interpolation"),
        (lambda: Preprocessing(std=(0.2, 0.0, 0.2)), "std"),
        (lambda: Preprocessing(mean=(0.5, 0.5), std=(0.2, 0.2, 0.2)), "one value per channel"),
        (lambda: Preprocessing(resize=0), "resize"),
        (lambda: Preprocessing.from_crop_pct(224, 1.0, crop_mode="border"), "border"),
        (lambda: Preprocessing.from_crop_pct((3, 256, 320), 1.0), "non-square"),
        (lambda: Preprocessing.from_hf_processor_config({"size": {"longest_edge": 800}}), "longest_edge"),
        (lambda: Preprocessing.from_hf_processor_config({"resample": 1}), "resample"),
    ],
)
def test_bad_configs_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
