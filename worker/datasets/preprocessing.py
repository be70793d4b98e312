"""Eval preprocessing from a model's own config: resize, centre crop, normalise (issue #18).

A ``Preprocessing`` names what a model expects at evaluation and ``apply`` does it on the device, on float
N x C x H x W batches in [0, 1], as torchvision's tensor transforms do (``transforms.v2.functional``):
  resize  -- F.interpolate(antialias=True, align_corners=False); an int is the shorter side (the longer side
             becomes int(size * long / short)), (H, W) is exact; no-op when the size already matches. Float
             tensors are not clamped after bicubic (torchvision clamps uint8 only).
  crop    -- centre crop, offsets int(round((H - h) / 2.0)); an image smaller than the crop is zero-padded
             first (torchvision center_crop).
  normalise (x - mean) / std.

Where the numbers come from:
  from_crop_pct            timm's eval rule (timm.data.transforms_factory.transforms_imagenet_eval): crop_mode
                           "center": shorter side floor(size / crop_pct), then CenterCrop(size); "squash": exact
                           resize to floor(size / crop_pct) per side, then CenterCrop(size).
  from_timm_model          timm.data.resolve_model_data_config(model) (the model's pretrained_cfg) -> from_crop_pct.
  from_hf_processor_config a Hugging Face preprocessor_config.json (ViTImageProcessor: exact resize;
                           BitImageProcessor, used by Dinov2: shortest_edge then crop_size; ConvNext: crop_pct).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from worker.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

INTERPOLATIONS = ("bilinear", "bicubic")
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling: BILINEAR = 2, BICUBIC = 3
TIMM_DEFAULT_CROP_PCT = 0.875  # timm.data.constants.DEFAULT_CROP_PCT
TIMM_CROP_MODES = ("center", "squash")  # "border" (letterbox + pad) is not expressible here
HF_CONVNEXT_WARP_SIZE = 384  # ConvNextImageProcessor: shortest_edge >= 384 warps to a square, no crop

Size = tuple[int, int]


def _size2(v: int | Sequence[int], what: str) -> Size:
    h, w = (v, v) if isinstance(v, numbers.Integral) else tuple(v)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{what} must be positive, got {v}")
    return (int(h), int(w))


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects at evaluation (see the module docstring for the exact operations).

    crop          -- network input (H, W) after the centre crop; None: no crop (the resized images' size)
    resize        -- int: shorter side before the crop; (H, W): exact size; None: no resize
    interpolation -- bilinear | bicubic (antialias=True)
    crop_pct      -- set when resize was derived from the crop as timm does (floor(crop / crop_pct)); used by
                     with_overrides to rescale resize when only the crop changes; None otherwise
    """

    crop: Size | None = None
    resize: int | Size | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = "default"
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        set_ = object.__setattr__  # frozen: normalise the field types once
        set_(self, "mean", tuple(float(m) for m in self.mean))
        set_(self, "std", tuple(float(s) for s in self.std))
        if self.crop is not None:
            set_(self, "crop", _size2(self.crop, "crop"))
        if isinstance(self.resize, numbers.Integral):
            if self.resize < 1:
                raise ValueError(f"resize must be positive, got {self.resize}")
            set_(self, "resize", int(self.resize))
        elif self.resize is not None:
            set_(self, "resize", _size2(self.resize, "resize"))

    def to_json(self) -> dict[str, Any]:
        """Every field as plain JSON (lists, not tuples)."""
        d = asdict(self)
        for k in ("crop", "resize", "mean", "std"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Preprocessing:
        """The inverse of to_json (e.g. a sandbox report read back)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def input_size(self) -> Size | None:
        """The network's input (H, W) whatever the images' size: the crop, else an exact resize; else None."""
        return self.crop if self.crop is not None else self.resize if isinstance(self.resize, tuple) else None

    @classmethod
    def from_crop_pct(
        cls,
        input_size: int | Sequence[int],
        crop_pct: float | None = None,
        interpolation: str = "bicubic",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source: str = "timm pretrained_cfg",
        crop_mode: str | None = None,
    ) -> Preprocessing:
        """timm's eval transform (transforms_imagenet_eval). input_size: int, (H, W) or timm's (C, H, W)."""
        if not isinstance(input_size, numbers.Integral) and len(input_size) == 3:
            input_size = tuple(input_size)[1:]
        h, w = _size2(input_size, "input_size")
        crop_pct = crop_pct or TIMM_DEFAULT_CROP_PCT
        mode = crop_mode or "center"
        if mode not in TIMM_CROP_MODES:
            raise ValueError(
                f"timm crop_mode {mode!r} is not supported (only {', '.join(TIMM_CROP_MODES)}); "
                "give resize and crop explicitly"
            )
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        if mode == "center" and h != w:  # timm's ResizeKeepRatio: not a shorter-side or exact resize
            raise ValueError(
                f"timm crop_mode 'center' with a non-square input {h}x{w} is not supported; "
                "give resize and crop explicitly"
            )
        resize: int | Size = scale[0] if mode == "center" else scale
        return cls(
            crop=(h, w),
            resize=resize,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            source=source,
            crop_pct=float(crop_pct),
        )

    @classmethod
    def from_timm_model(cls, model: torch.nn.Module) -> Preprocessing:
        """From a timm model's pretrained_cfg (timm.data.resolve_model_data_config)."""
        import timm.data  # lazily: only the loader of timm models needs it

        cfg = timm.data.resolve_model_data_config(model)
        return cls.from_crop_pct(
            cfg["input_size"],
            cfg.get("crop_pct"),
            cfg.get("interpolation", "bicubic"),
            cfg["mean"],
            cfg["std"],
            source="timm pretrained_cfg",
            crop_mode=cfg.get("crop_mode"),
        )

    @classmethod
    def from_hf_processor_config(cls, d: Mapping[str, Any]) -> Preprocessing:
        """From a Hugging Face image processor's preprocessor_config.json (a dict).

        size {"shortest_edge": s} -> resize s (shorter side); {"height", "width"} -> exact resize; a bare int
        (old configs) is a shorter side when the processor centre-crops, else a square. crop_size (dict or int)
        applies when do_center_crop (absent: when crop_size is given, as in the processors that have one). ConvNext's crop_pct: shortest_edge < 384 -> shorter side
        int(s / crop_pct) then crop s, else a warp to s x s. rescale_factor other than 1/255 (or do_rescale
        false) is folded into mean / std, since apply() takes images in [0, 1].
        """
        crop_on = bool(
            d.get("do_center_crop", d.get("crop_size") is not None)
        )  # processors with crop_size crop
        resize, crop, crop_pct = (
            _hf_resize(d.get("size"), crop_on) if d.get("do_resize", True) else (None, None, None)
        )
        if crop_on and d.get("crop_size") is not None:
            c = d["crop_size"]
            crop = _size2(c if isinstance(c, int) else (c["height"], c["width"]), "crop_size")
        if "crop_pct" in d and isinstance(resize, int) and crop is None and d.get("do_resize", True):
            resize, crop, crop_pct = _hf_convnext(resize, float(d["crop_pct"] or 1.0))
        resample = d.get("resample", 2)
        interpolation = PIL_RESAMPLE.get(resample) if isinstance(resample, int) else str(resample).lower()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"resample {resample!r} is not supported (2 bilinear, 3 bicubic)")
        mean, std = (d.get("image_mean", IMAGENET_MEAN), d.get("image_std", IMAGENET_STD))
        if not d.get("do_normalize", True):
            mean, std = (0.0,) * 3, (1.0,) * 3
        scale = 255.0 * (float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0)
        if abs(scale - 1.0) > 1e-9:  # (u8 * r - m) / s == (x01 - m / (255 r)) / (s / (255 r))
            mean, std = [m / scale for m in mean], [s / scale for s in std]
        return cls(
            crop=crop,
            resize=resize,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            source="hf preprocessor_config.json",
            crop_pct=crop_pct,
        )

    def with_overrides(
        self,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: int | Sequence[int] | None = None,
        crop: int | Sequence[int] | None = None,
        interpolation: str | None = None,
    ) -> Preprocessing:
        """A copy with the given fields replaced (None keeps a field); source becomes "repscope" when any is given.

        Rule for a crop given without a resize (the crop fraction is kept): when resize was derived from
        crop_pct (timm), it is recomputed the same way: shorter side floor(max(crop) / crop_pct), or
        floor(crop / crop_pct) per side for timm's "squash"; otherwise with the config's own fraction,
        floor(max(crop) * resize / max(old crop)) for a shorter side (HF 256 / 224, torchvision, 32 / 32), per
        side for an exact (H, W), which simply follows the crop when there was none (HF ViT, legacy
        image_size). A shorter-side resize without a crop, or no resize, stays. A resize given explicitly
        clears crop_pct.
        """
        if all(v is None for v in (mean, std, resize, crop, interpolation)):
            return self
        new_crop = _size2(crop, "crop") if crop is not None else self.crop
        new_resize, crop_pct = self.resize, self.crop_pct
        if resize is not None:
            new_resize = int(resize) if isinstance(resize, numbers.Integral) else _size2(resize, "resize")
            crop_pct = None
        elif crop is not None:
            new_resize = self._resize_for_crop(new_crop)
        return replace(
            self,
            crop=new_crop,
            resize=new_resize,
            crop_pct=crop_pct,
            mean=tuple(mean) if mean is not None else self.mean,
            std=tuple(std) if std is not None else self.std,
            interpolation=interpolation or self.interpolation,
            source="repscope",
        )

    def _resize_for_crop(self, crop: Size) -> int | Size | None:
        old, r = self.crop, self.resize
        if self.crop_pct is not None and isinstance(r, int):  # timm "center": the crop must fit either way
            return math.floor(max(crop) / self.crop_pct)
        if self.crop_pct is not None and r is not None:  # timm "squash": per side
            return (math.floor(crop[0] / self.crop_pct), math.floor(crop[1] / self.crop_pct))
        if isinstance(r, int) and old is not None:  # the same fraction resize / crop (integer arithmetic)
            return max(crop) * r // max(old)
        if isinstance(r, tuple):  # per side; an exact resize to the input (no crop) follows the new crop
            return (crop[0] * r[0] // old[0], crop[1] * r[1] // old[1]) if old is not None else crop
        return r

    def output_size(self, image_size: Sequence[int]) -> Size:
        """(H, W) of apply()'s output for images of image_size (H, W)."""
        if self.crop is not None:
            return self.crop
        return resized_size(image_size, self.resize)


def _hf_resize(size: Any, crop_on: bool) -> tuple[int | Size | None, Size | None, None]:
    if size is None:
        return None, None, None
    if isinstance(size, int):
        return (size if crop_on else (size, size)), None, None
    if set(size) >= {"height", "width"}:
        return _size2((size["height"], size["width"]), "size"), None, None
    if set(size) == {"shortest_edge"}:
        return int(size["shortest_edge"]), None, None
    raise ValueError(
        f"image processor size {dict(size)} is not supported (shortest_edge, or height and width)"
    )


def _hf_convnext(shortest_edge: int, crop_pct: float) -> tuple[int | Size, Size | None, float | None]:
    if shortest_edge >= HF_CONVNEXT_WARP_SIZE:
        return (shortest_edge, shortest_edge), None, None
    return int(shortest_edge / crop_pct), (shortest_edge, shortest_edge), crop_pct


def resized_size(image_size: Sequence[int], resize: int | Sequence[int] | None) -> Size:
    """torchvision's output size (_compute_resized_output_size): an int is the shorter side."""
    h, w = int(image_size[0]), int(image_size[1])
    if resize is None:
        return (h, w)
    if not isinstance(resize, int):
        return _size2(resize, "resize")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """torchvision center_crop on N x C x H x W: zero-pad when smaller, then offsets int(round((H - h) / 2.0))."""
    ch, cw = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        pw, ph = max(cw - w, 0), max(ch - h, 0)
        x = F.pad(x, [pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2], value=0.0)
        h, w = x.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return x[..., top : top + ch, left : left + cw]


def resize(
    x: torch.Tensor, size: int | Sequence[int] | None, interpolation: str = "bilinear"
) -> torch.Tensor:
    """torchvision resize on float N x C x H x W (antialias, no clamp); no-op when the size already matches."""
    out = resized_size(x.shape[-2:], size)
    if out == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=out, mode=interpolation, align_corners=False, antialias=True)


def stats(prep: Preprocessing, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """prep's mean and std as float32 tensors on the device (make once, pass to apply for every batch)."""
    return (
        torch.tensor(prep.mean, dtype=torch.float32, device=device),
        torch.tensor(prep.std, dtype=torch.float32, device=device),
    )


def apply(
    x01: torch.Tensor,
    prep: Preprocessing,
    *,
    mean_std: tuple[torch.Tensor, torch.Tensor] | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """float N x C x H x W in [0, 1] -> resized, centre-cropped, normalised float N x C x h x w.

    mean_std -- prep's statistics already on the device (``stats``), to skip a host-to-device copy per batch.
    """
    x = resize(x01, prep.resize, prep.interpolation)
    if prep.crop is not None:
        x = center_crop(x, prep.crop)
    m, s = mean_std if mean_std is not None else stats(prep, x.device)
    x = normalize(x, m, s)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
