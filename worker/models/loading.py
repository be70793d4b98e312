"""Load an uploaded encoder checkpoint into an eval-mode ``nn.Module`` and the preprocessing it expects.

Formats (detected from the file's content; a format name given as ``fmt`` must agree, an extension only hints):
  torchscript  ``torch.jit.save`` zip: ``<root>/code/**.py`` + ``<root>/constants.pkl`` + ``data.pkl``
  export       ``torch.export.save`` .pt2 zip: ``<root>/archive_format`` ("pt2"), ``<root>/models/*.json``
  state_dict   ``torch.save(state_dict or a training checkpoint)`` zip (``<root>/data.pkl``) or legacy pickle
  safetensors  8-byte little-endian header length + JSON header
  hf           a zip of a Hugging Face ``save_pretrained`` folder: config.json + *.safetensors

Uploaded files are untrusted (DESIGN.md). What runs, per format:
  * state_dict: ``torch.load(weights_only=True)`` only (tensors, containers, numbers, plus the inert
    argparse.Namespace / Lightning AttributeDict of training metadata); any other pickle global is refused
    before anything is called. safetensors and hf hold no code at all (hf's config.json picks one of the model
    classes transformers ships; ``auto_map`` custom code is refused).
  * torchscript / export: worker.models.graphs (operator allowlists; export archives vetted before loading).
  Neither interpreter is a sandbox: the worker loads and runs uploaded checkpoints only inside worker.sandbox
  (no secrets, no network, writes only to a scratch dir). ``load_encoder`` in-process is for one's own files.

Weights formats (state_dict, safetensors, hf) are loaded strictly into an architecture built by the library
users train with (worker.models.architectures: timm, torchvision; worker.models.hf: transformers):
worker.models.layouts finds the encoder inside the training codebase's checkpoint, the library's converter
runs (timm's checkpoint_filter_fn), and worker.models.strict refuses any missing, misshaped or unexplained
tensor. The LoadReport says what was loaded, stripped, converted and dropped by which rule.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.datasets.preprocessing import Preprocessing

from . import graphs
from .architectures import Architecture, ArchitectureError, build
from .errors import CheckpointError, short
from .features import POOLS, encode
from .layouts import LayoutError, locate
from .projector import Encoder, build_projector, projector_prefix
from .strict import LoadReport, StrictLoadError, apply_converter, match

FORMATS = ("torchscript", "export", "state_dict", "safetensors", "hf")
FORMAT_ALIASES = {
    "ts": "torchscript", "jit": "torchscript", "torchscript": "torchscript",
    "pt2": "export", "export": "export",
    "pt": "state_dict", "pth": "state_dict", "ckpt": "state_dict", "state_dict": "state_dict",
    "safetensors": "safetensors", "hf": "hf", "zip": "hf",
}  # fmt: skip
AMBIGUOUS_EXTENSIONS = ("pt", "pth", "ckpt", "bin", "zip")
WEIGHTS_FORMATS = ("state_dict", "safetensors", "hf")
OUTPUTS = ("backbone", "projector")
PREPROCESSING_OVERRIDES = ("mean", "std", "resize", "crop", "interpolation")
# Inert training metadata that weights-only unpickling may meet next to the weights.
SAFE_METADATA_GLOBALS = [argparse.Namespace]
ATTRIBUTE_DICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)
# class_token=False checkpoints (I-JEPA) in a timm ViT: no CLS token, mean of the tokens, final norm kept as `norm`.
NO_CLS_TOKEN_KWARGS = {"class_token": False, "global_pool": "avg", "fc_norm": False}

__all__ = ["FORMATS", "CheckpointError", "LoadReport", "LoadedEncoder", "detect_checkpoint_format",
           "load_encoder", "vet_export_archive"]
vet_export_archive = graphs.vet_export_archive


@dataclass
class LoadedEncoder:
    """An eval-mode encoder, how it was obtained, and the preprocessing it expects (``embed`` applies it)."""

    module: nn.Module
    report: LoadReport
    fmt: str
    arch: str | None
    preprocessing: Preprocessing
    pool: str = "cls"
    output: str = "backbone"

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) the network is fed, or None when it takes the images' own size."""
        return self.preprocessing.input_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return encode(self.module, images, pool=self.pool)


# ---------------------------------------------------------------- format detection


def _zip_names(path: str | os.PathLike) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, NotImplementedError) as e:
        raise CheckpointError(f"checkpoint zip archive is corrupt or truncated ({e})") from e


def _detect_zip(names: list[str]) -> str:
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "export"
    if "serialized_exported_program.json" in names:
        raise CheckpointError("legacy torch.export archive (torch < 2.5): re-save it with torch.export.save")
    if any(n.endswith("data.pkl") for n in names):
        return "state_dict"
    if any(n.rpartition("/")[2] == "config.json" for n in names):
        return "hf"
    if any(n.endswith(".safetensors") for n in names):
        raise CheckpointError("zip of .safetensors without config.json: a Hugging Face model zip needs the "
                              "config.json that save_pretrained writes")
    if any(n.endswith(".npy") for n in names):
        raise CheckpointError("file is an .npz of arrays, not a checkpoint (upload it as embeddings)")
    raise CheckpointError("zip archive is neither TorchScript, torch.export (.pt2), torch.save nor a Hugging Face "
                          "model folder")


def detect_checkpoint_format(path: str | os.PathLike, filename: str | None = None) -> str:
    """One of FORMATS from the file's bytes (the extension is not trusted; ``filename`` is unused)."""
    del filename
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _detect_zip(_zip_names(path))
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "state_dict"  # legacy (non-zip) torch.save; still loaded with weights_only=True
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (100 << 20):
        return "safetensors"
    raise CheckpointError(
        "unknown checkpoint format: expected TorchScript (torch.jit.save), torch.export (.pt2), "
        "a torch.save'd state_dict (.pt/.pth/.ckpt), .safetensors or a zipped Hugging Face model folder"
    )


def _resolve_format(path, fmt: str | None) -> str:
    """The detected format. ``fmt`` may be a format name (must agree with the content) or a bare extension;
    AMBIGUOUS_EXTENSIONS (a TorchScript archive is often a .pt too) only hint, content wins."""
    detected = detect_checkpoint_format(path)
    if fmt is None or fmt.lower().lstrip(".") in AMBIGUOUS_EXTENSIONS:
        return detected
    wanted = FORMAT_ALIASES.get(fmt.lower().lstrip("."))
    if wanted is None:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")
    if wanted != detected:
        raise CheckpointError(f"file content is a {detected} checkpoint, but format {fmt!r} was given")
    return wanted


# ---------------------------------------------------------------- weights


class _InertDict(dict):
    """Stand-in for Lightning's AttributeDict (hyper-parameters): a plain dict, no behaviour."""


def _read_checkpoint(path, fmt: str) -> Any:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"invalid .safetensors file: {short(e)}") from e
    safe = SAFE_METADATA_GLOBALS + [(_InertDict, name) for name in ATTRIBUTE_DICT_NAMES]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        message = str(e)
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if found:
            raise CheckpointError(
                f"refused to unpickle checkpoint: it references {', '.join(sorted(set(found)))!s}, which is "
                "not a tensor, container or number. Only weights-only checkpoints are accepted: save with "
                "torch.save(model.state_dict(), path)"
            ) from e
        if "Weights only load failed" in message:
            detail = message.split("WeightsUnpickler error:")[-1]
            raise CheckpointError(f"refused to unpickle checkpoint: {short(detail)}") from e
        raise CheckpointError(f"invalid torch.save checkpoint: {type(e).__name__}: {short(e)}") from e


def named_arch(checkpoint: Any) -> str | None:
    """The architecture a training checkpoint names itself: a top-level string ``arch`` (timm train.py, MoCo)."""
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    return arch if isinstance(arch, str) and arch else None


def _architecture(path, kind: str, arch: str | None, arch_kwargs: dict | None,
                  pool: str) -> tuple[Architecture, Any]:
    """The architecture (built, random init) and the raw checkpoint object its weights come from."""
    checkpoint = _read_checkpoint(path, kind)
    arch = arch or named_arch(checkpoint)
    if not arch:
        raise CheckpointError(f"a {kind} checkpoint holds only weights: name its architecture with arch (a timm "
                              "model name, torchvision:<name>, resnet18_cifar, ...)")
    return build(arch, arch_kwargs=arch_kwargs, pool=pool), checkpoint


def _no_cls_token(built: Architecture, checkpoint: Any, checkpoint_key: str | None,
                  arch_kwargs: dict | None) -> dict | None:
    """Implied arch_kwargs for a timm ViT whose weights have no CLS token (I-JEPA), else None."""
    model = built.model
    if built.library != "timm" or getattr(model, "cls_token", None) is None or "class_token" in (arch_kwargs or {}):
        return None
    known = set(model.state_dict())
    loc = locate(checkpoint, known, checkpoint_key=checkpoint_key)
    pos = loc.tensors.get("pos_embed")
    patches = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if "cls_token" in loc.tensors or pos is None or pos.shape[1] != patches:
        return None
    return {**NO_CLS_TOKEN_KWARGS, **(arch_kwargs or {})}


def load_weights(path, kind: str, *, arch: str | None, arch_kwargs: dict | None, checkpoint_key: str | None,
                 pool: str, output: str) -> tuple[nn.Module, LoadReport, Architecture]:
    """Build the architecture and load the checkpoint's encoder into it strictly (module docstring)."""
    if kind == "hf":
        from .hf import load_hf_encoder

        return load_hf_encoder(path, arch=arch, arch_kwargs=arch_kwargs, pool=pool, output=output)
    built, checkpoint = _architecture(path, kind, arch, arch_kwargs, pool)
    implied = _no_cls_token(built, checkpoint, checkpoint_key, arch_kwargs)
    if implied is not None:
        built = build(arch or named_arch(checkpoint), arch_kwargs=implied, pool=pool)
    target = built.weights_module
    loc = locate(checkpoint, set(target.state_dict()), checkpoint_key=checkpoint_key)
    report = LoadReport(layout=loc.layout, source_key=loc.source_key, prefix=loc.prefix,
                        architecture=built.describe(), ignored_entries=loc.ignored_entries)
    if implied is not None:
        report.warnings.append(f"the weights have no CLS token: built with {NO_CLS_TOKEN_KWARGS} (mean of the "
                               "patch tokens)")
    tensors = apply_converter(loc, built.filter_fn, built.filter_name, target, report)
    projector, keep = None, ()
    if output == "projector":
        where = projector_prefix(list(loc.outside), loc.prefix)
        if where is None:
            raise CheckpointError("output='projector' was requested but the checkpoint has no projector.* weights "
                                  "beside the encoder")
        projector = build_projector({k[len(where):]: v for k, v in loc.outside.items() if k.startswith(where)})
        keep = (where,)
        report.projector = where
    state = match(loc, tensors, target, built.classifier, report, keep=keep)
    target.load_state_dict(state, strict=True)
    return Encoder(built.model, projector).eval(), report, built


# ---------------------------------------------------------------- entry point


def load_encoder(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    arch: str | None = None,
    pool: str = "cls",
    output: str = "backbone",
    arch_kwargs: dict | None = None,
    checkpoint_key: str | None = None,
    preprocessing: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    vet_ops: bool = True,
) -> LoadedEncoder:
    """Load a checkpoint file as an eval-mode encoder on ``device`` (default CPU).

    fmt            -- optional; must agree with the detected format (FORMATS or an alias: pt2, pth, ...)
    arch           -- weights formats: a timm model name, torchvision:<name>, resnet18_cifar / resnet50_cifar;
                      may be omitted when the checkpoint names it (a top-level "arch", an HF config.json)
    arch_kwargs    -- constructor arguments the weights cannot tell (img_size, ...), recorded in the report
    pool           -- token models: "cls" or "mean" (patch tokens); how graph formats' token outputs are reduced
    output         -- "backbone" (default) or "projector" (the projector MLP beside the encoder, weights formats)
    checkpoint_key -- nested entry to use (e.g. "student", "state_dict_ema"); default: found (layouts.locate)
    preprocessing  -- overrides of the model config's: mean, std, resize, crop, interpolation
    vet_ops        -- the operator allowlist on TorchScript / export graphs (off only in tests)
    Raises CheckpointError for anything unusable; never evaluates a partially loaded encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if pool not in POOLS:
        raise CheckpointError(f"pool must be one of {POOLS}, got {pool!r}")
    if output not in OUTPUTS:
        raise CheckpointError(f"output must be one of {OUTPUTS}, got {output!r}")
    dev = torch.device(device or "cpu")
    kind = _resolve_format(path, fmt)
    if kind in WEIGHTS_FORMATS:
        try:
            module, report, built = load_weights(path, kind, arch=arch, arch_kwargs=arch_kwargs,
                                                 checkpoint_key=checkpoint_key, pool=pool, output=output)
        except (ArchitectureError, LayoutError, StrictLoadError, ValueError) as e:
            raise e if isinstance(e, CheckpointError) else CheckpointError(str(e)) from e
        prep, arch = built.preprocessing, built.name
    else:
        if output != "backbone":
            raise CheckpointError(f"output={output!r} needs a weights checkpoint and an architecture; a {kind} "
                                  "module is evaluated through its own forward")
        module, report, hw = graphs.load_graph(path, kind, dev, pool, vet_ops)
        prep = Preprocessing(crop=hw, resize=hw, source="graph's static input size") if hw else Preprocessing()
    given = {k: v for k, v in (preprocessing or {}).items() if v is not None}
    if given:
        unknown = sorted(set(given) - set(PREPROCESSING_OVERRIDES))
        if unknown:
            raise CheckpointError(f"unknown preprocessing field(s) {unknown}; expected {PREPROCESSING_OVERRIDES}")
        try:
            prep = replace(prep.with_overrides(**given),
                           source=f"{prep.source}; {', '.join(sorted(given))} from the upload")
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid preprocessing override: {e}") from e
    module = module.to(dev)
    _set_eval(module)
    return LoadedEncoder(module, report, kind, arch, prep, pool=pool, output=output)


def _set_eval(module: nn.Module) -> None:
    """eval() where the module supports it (exported GraphModules bake train/eval in and refuse .eval())."""
    try:
        module.eval()
    except NotImplementedError:
        pass
