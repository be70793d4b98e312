"""What the client and the CLI send for a checkpoint (issue #18): the file to upload and its form fields.

- a file path: sent as it is;
- a folder (transformers `save_pretrained`): zipped, the files at the zip's root (repscope.checkpoint_hf);
- a transformers PreTrainedModel: `save_pretrained(safe_serialization=True)` into a temp folder, zipped, arch "hf";
- a timm model (a `pretrained_cfg` dict naming its "architecture"): its state_dict, arch defaulting to that name;
- any other nn.Module: its state_dict when `arch` is given, else TorchScript (`torch.jit.script`).
Torch is imported only when a module is given, so the client stays light.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HF_ARCH = "hf"  # = repscope.architectures.HF
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")  # weights: deflate gains little, costs CPU


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    arch: str | None
    temporary: bool  # a file this module wrote: remove it once uploaded

    def cleanup(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def _temp_path(suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="repscope-ckpt-", suffix=suffix)
    os.close(fd)
    return Path(name)


def zip_folder(folder: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Zip a model folder's files (hidden ones skipped, symlinks followed: a hub snapshot's files are links) with
    their paths relative to `folder`; `dest` defaults to a new temp file. Returns the zip's path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"{folder} holds no files to upload")
    dest = Path(dest) if dest is not None else _temp_path(".zip")
    with zipfile.ZipFile(dest, "w") as zf:
        for path in files:
            compress = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            zf.write(path, path.relative_to(folder).as_posix(), compress_type=compress)
    return dest


def _is_hf_model(model: Any) -> bool:
    return callable(getattr(model, "save_pretrained", None)) and hasattr(model, "config")


def timm_architecture(model: Any) -> str | None:
    """The timm model name a timm model was created with (its pretrained_cfg's "architecture"), else None."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) and name else None


def checkpoint_file(model_or_path: Any, arch: str | None = None) -> CheckpointFile:
    """The file to upload for a path, a folder or an nn.Module, and the arch to send with it (module docstring)."""
    if isinstance(model_or_path, str | os.PathLike):
        path = Path(model_or_path)
        if path.is_dir():
            return CheckpointFile(zip_folder(path), arch, temporary=True)
        return CheckpointFile(path, arch, temporary=False)
    if _is_hf_model(model_or_path):
        if arch not in (None, HF_ARCH):
            raise ValueError(f"a transformers model is uploaded as a Hugging Face zip (arch {HF_ARCH!r}), not as "
                             f"{arch!r}")
        folder = Path(tempfile.mkdtemp(prefix="repscope-hf-"))
        try:
            model_or_path.save_pretrained(folder, safe_serialization=True)
            return CheckpointFile(zip_folder(folder), HF_ARCH, temporary=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    import torch  # only for modules

    arch = arch or timm_architecture(model_or_path)
    path = _temp_path(".pt")
    try:
        if arch:
            torch.save({k: v.detach().cpu() for k, v in model_or_path.state_dict().items()}, path)
        else:
            torch.jit.save(torch.jit.script(model_or_path), path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return CheckpointFile(path, arch, temporary=True)


def _triple(value: str | Sequence[float]) -> str:
    return value if isinstance(value, str) else ",".join(repr(float(v)) for v in value)


def checkpoint_fields(*, arch: str | None = None, arch_kwargs: dict[str, Any] | str | None = None,
                      checkpoint_key: str | None = None, mean: str | Sequence[float] | None = None,
                      std: str | Sequence[float] | None = None, resize: int | None = None, crop: int | None = None,
                      interpolation: str | None = None, pool: str | None = None, output: str | None = None,
                      views: int | None = None) -> dict[str, str]:
    """The checkpoint upload's form fields, as strings, only those given (backend.api.checkpoint_fields)."""
    raw = {"arch": arch, "checkpoint_key": checkpoint_key, "resize": resize, "crop": crop,
           "interpolation": interpolation, "pool": pool, "output": output, "views": views,
           "arch_kwargs": arch_kwargs if arch_kwargs is None or isinstance(arch_kwargs, str)
           else json.dumps(arch_kwargs),
           "mean": None if mean is None else _triple(mean), "std": None if std is None else _triple(std)}
    return {k: str(v) for k, v in raw.items() if v is not None}


CLI_FLAGS = ("arch", "arch_kwargs", "checkpoint_key", "pool", "output", "views", "mean", "std", "resize", "crop",
             "interpolation")


def add_cli_arguments(parser: Any) -> None:
    """`repscope upload`'s checkpoint flags (argparse), named as the upload form's fields."""
    group = parser.add_argument_group("checkpoints (--kind checkpoint; each optional)")
    group.add_argument("--arch", help="a timm model name (resnet50, vit_small_patch14_dinov2), torchvision:<name> "
                                      "(torchvision:resnet101), hf (a Hugging Face folder or zip), resnet18_cifar or "
                                      "resnet50_cifar; needed for a state_dict unless it has a top-level 'arch'")
    group.add_argument("--arch-kwargs", metavar="JSON",
                       help="architecture keyword arguments the weights cannot tell, e.g. '{\"img_size\": 224}'")
    group.add_argument("--checkpoint-key", metavar="KEY", help="the nested dict holding the weights (teacher, "
                                                               "student, state_dict_ema, target_encoder, ...)")
    group.add_argument("--pool", choices=["cls", "mean"], help="ViTs: CLS token (default) or mean of tokens")
    group.add_argument("--output", choices=["backbone", "projector"], help="embed with the backbone (default) or "
                                                                           "the projector")
    group.add_argument("--views", type=int, help="augmented views per image, 0-16 (>= 2 enables LiDAR)")
    model = " (default: the model's timm / Hugging Face preprocessing config, else ImageNet's)"
    group.add_argument("--mean", metavar="R,G,B", help="normalisation mean, three floats in [0, 1]" + model)
    group.add_argument("--std", metavar="R,G,B", help="normalisation std, three floats > 0" + model)
    group.add_argument("--resize", type=int, metavar="PX", help="shorter side before the center crop, 8-4096" + model)
    group.add_argument("--crop", type=int, metavar="PX", help="the network's input size (a center crop), 8-4096"
                                                              + model)
    group.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="resize interpolation" + model)


def cli_fields(args: Any) -> dict[str, str]:
    """The form fields of the checkpoint flags given on the command line."""
    return checkpoint_fields(**{name: getattr(args, name, None) for name in CLI_FLAGS})
