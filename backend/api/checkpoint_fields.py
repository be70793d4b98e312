"""The checkpoint upload's form fields (issue #18 contract): parsed and validated before the file is looked at.

Every field is optional. Only the fields the user set are stored in the evaluation params (besides arch, pool,
output and views, stored as before), so every one of them can enter the embed cache key (repscope.cache). `arch`
is checked against the names a worker can build (repscope.architectures, torch-free); an unknown one is a 422
listing close names.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from backend.services.artifacts import UploadRejected
from repscope.architectures import RESERVED_KWARGS, UnknownArchitecture, resolve_name

POOLS = ("cls", "mean")
OUTPUTS = ("backbone", "projector")
INTERPOLATIONS = ("bilinear", "bicubic")
MAX_VIEWS = 16
MAX_ARCH_KWARGS_CHARS = 2000
ARCH_KWARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
CHECKPOINT_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
ARCH_CHARS = re.compile(r"[A-Za-z0-9_.:\-/]{1,100}")
IMAGE_SIZE_RANGE = (8, 4096)

FORM_PROPERTIES = {
    "arch": {"type": "string", "description": "checkpoint: a timm model name (resnet50, vit_small_patch14_dinov2), "
                                              "torchvision:<name> (torchvision:resnet101), hf (a Hugging Face model "
                                              "zip) or resnet18_cifar / resnet50_cifar; needed for a state_dict "
                                              "or .safetensors unless the file names it (a top-level 'arch')"},
    "arch_kwargs": {"type": "string", "description": "JSON object of keyword arguments for the architecture the "
                                                     "weights cannot tell, e.g. {\"img_size\": 224}"},
    "checkpoint_key": {"type": "string", "pattern": f"^{CHECKPOINT_KEY.pattern}$",
                       "description": "the nested dict holding the weights (teacher, state_dict_ema, ...)"},
    "pool": {"type": "string", "enum": list(POOLS), "description": "ViTs: CLS token or mean"},
    "output": {"type": "string", "enum": list(OUTPUTS)},
    "views": {"type": "integer", "minimum": 0, "maximum": MAX_VIEWS,
              "description": "augmented views per image (enables LiDAR)"},
    "mean": {"type": "string", "description": "three floats in [0, 1], e.g. 0.5,0.5,0.5 (default: the model's)"},
    "std": {"type": "string", "description": "three floats > 0, e.g. 0.5,0.5,0.5 (default: the model's)"},
    "resize": {"type": "integer", "minimum": IMAGE_SIZE_RANGE[0], "maximum": IMAGE_SIZE_RANGE[1],
               "description": "shorter side before the center crop (default: the model's)"},
    "crop": {"type": "integer", "minimum": IMAGE_SIZE_RANGE[0], "maximum": IMAGE_SIZE_RANGE[1],
             "description": "the network's input size, a center crop (default: the model's)"},
    "interpolation": {"type": "string", "enum": list(INTERPOLATIONS), "description": "resize interpolation"},
}


def _text(fields: dict[str, str], name: str) -> str | None:
    return (fields.get(name) or "").strip() or None


def _choice(fields: dict[str, str], name: str, options: tuple[str, ...]) -> str | None:
    value = _text(fields, name)
    if value is not None and value not in options:
        raise UploadRejected(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def _int(fields: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    raw = _text(fields, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UploadRejected(f"{name} must be an integer; got {raw!r}") from None
    if not lo <= value <= hi:
        raise UploadRejected(f"{name} must be between {lo} and {hi}; got {value}")
    return value


def check_arch(arch: str, source: str = "arch") -> None:
    """UploadRejected (422) naming close names when `arch` is no architecture a worker can build."""
    if not ARCH_CHARS.fullmatch(arch):
        raise UploadRejected(f"{source} {arch[:100]!r} is not a valid architecture name")
    try:
        resolve_name(arch)
    except UnknownArchitecture as exc:
        raise UploadRejected(str(exc) if source == "arch" else f"{source}: {exc}") from None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))


def parse_arch_kwargs(raw: str) -> dict[str, Any]:
    """A JSON object of keyword arguments: identifier keys; values null/bool/number/string or flat lists of them."""
    if len(raw) > MAX_ARCH_KWARGS_CHARS:
        raise UploadRejected(f"arch_kwargs is {len(raw)} characters; the limit is {MAX_ARCH_KWARGS_CHARS}")
    try:
        value = json.loads(raw, parse_constant=lambda c: float("nan"))
    except ValueError as exc:
        raise UploadRejected(f"arch_kwargs is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UploadRejected(f"arch_kwargs must be a JSON object such as {{\"img_size\": 224}}; got {raw[:80]!r}")
    for key, item in value.items():
        if not ARCH_KWARG_NAME.fullmatch(key):
            raise UploadRejected(f"arch_kwargs key {key[:80]!r} is not a Python identifier")
        if key in RESERVED_KWARGS:
            raise UploadRejected(f"arch_kwargs key {key!r} is not allowed: it would load, fetch or reshape weights "
                                 "rather than describe the architecture (the uploaded checkpoint is the weights)")
        if not (_scalar(item) or (isinstance(item, list) and all(_scalar(v) for v in item))):
            raise UploadRejected(f"arch_kwargs[{key!r}] must be a finite number, string, bool, null or a flat list "
                                 "of those")
    return value


def parse_triple(fields: dict[str, str], name: str) -> list[float] | None:
    """Three floats, "0.5,0.5,0.5" or "[0.5, 0.5, 0.5]": mean within [0, 1], std > 0."""
    raw = _text(fields, name)
    if raw is None:
        return None
    parts = [p.strip() for p in raw.removeprefix("[").removesuffix("]").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UploadRejected(f"{name} must be three numbers (one per RGB channel), e.g. 0.5,0.5,0.5; got {raw!r}")
    if name == "mean" and not all(0 <= v <= 1 for v in values):
        raise UploadRejected(f"mean values are for images scaled to [0, 1]: each must be within [0, 1]; got {raw!r}")
    if name == "std" and not all(v > 0 for v in values):
        raise UploadRejected(f"std values must be > 0; got {raw!r}")
    return values


def parse_checkpoint_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The evaluation params of a checkpoint upload: arch, pool, output, views always (arch None when not given),
    the contract's other fields only when set."""
    arch = _text(fields, "arch")
    if arch is not None:
        check_arch(arch)
    views = _int(fields, "views", 0, MAX_VIEWS)
    params: dict[str, Any] = {"arch": arch, "pool": _choice(fields, "pool", POOLS) or POOLS[0],
                              "output": _choice(fields, "output", OUTPUTS) or OUTPUTS[0],
                              "views": views if views is not None else 0}
    raw_kwargs = _text(fields, "arch_kwargs")
    if raw_kwargs is not None:
        params["arch_kwargs"] = parse_arch_kwargs(raw_kwargs)
    key = _text(fields, "checkpoint_key")
    if key is not None and not CHECKPOINT_KEY.fullmatch(key):
        raise UploadRejected(f"checkpoint_key {key[:100]!r} must be 1-100 letters, digits, '_', '.' or '-'")
    optional = {"checkpoint_key": key, "mean": parse_triple(fields, "mean"), "std": parse_triple(fields, "std"),
                "resize": _int(fields, "resize", *IMAGE_SIZE_RANGE), "crop": _int(fields, "crop", *IMAGE_SIZE_RANGE),
                "interpolation": _choice(fields, "interpolation", INTERPOLATIONS)}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params
