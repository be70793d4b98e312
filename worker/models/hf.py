"""Hugging Face models from a zip of a ``save_pretrained`` folder: config.json + *.safetensors
(+ preprocessor_config.json). Offline: the architecture is built from config.json's ``model_type`` by
transformers' own classes (AutoModel.from_config); ``auto_map`` (custom code) is refused, ``trust_remote_code``
is never set, pickled ``pytorch_model.bin`` files are not read. Weights then go through the same strict load
as every state_dict (a task model's ``dinov2.`` prefix is found; its ``classifier.`` is dropped by rule).

Features: ``last_hidden_state`` (after the final LayerNorm); pool "cls" takes token 0 (for Dinov2Model this
equals ``pooler_output``), "mean" the patch tokens (after the CLS token and any registers). Convolutional models
(4-D hidden state) give ``pooler_output`` flattened.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from worker.datasets.preprocessing import Preprocessing

from .architectures import Architecture, ArchitectureError
from .layouts import drop_rule
from .projector import Encoder
from .strict import OPTIONAL_SUFFIXES, LoadReport

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
MAX_CONFIG_BYTES = 1 << 20


class HFEncoder(nn.Module):
    """A transformers vision model whose forward(pixel_values) returns pooled features [N, D]."""

    def __init__(self, model: nn.Module, pool: str, prefix_tokens: int):
        super().__init__()
        self.model, self.pool, self.prefix_tokens = model, pool, prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:
            return out.pooler_output.flatten(1)
        if self.pool == "cls":
            return hidden[:, 0]
        return hidden[:, self.prefix_tokens:].mean(dim=1)


def _root(names: list[str]) -> str:
    """The folder of the zip that holds config.json ("" or "<top>/")."""
    configs = [n for n in names if PurePosixPath(n).name == CONFIG and n.count("/") <= 1]
    if len(configs) != 1:
        raise ArchitectureError(f"a Hugging Face model zip needs exactly one {CONFIG} at its root or in one "
                                f"top folder; found {len(configs)}")
    return configs[0][: -len(CONFIG)]


HF_FILES = (CONFIG, PROCESSOR, "model.safetensors.index.json")


def extract_hf_zip(path: str, dest: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Extract config.json, preprocessor_config.json and the .safetensors shards (nothing else: no pickles,
    no code) into ``dest``; returns (config, preprocessor config or None)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = _root(names)
        config = _json(zf, root + CONFIG)
        processor = _json(zf, root + PROCESSOR) if root + PROCESSOR in names else None
        wanted = [n for n in names if n.startswith(root) and "/" not in n[len(root):]
                  and (n[len(root):] in HF_FILES or n.endswith(".safetensors"))]
        if not any(n.endswith(".safetensors") for n in wanted):
            raise ArchitectureError("the Hugging Face model zip has no .safetensors weights (pytorch_model.bin "
                                    "pickles are not read: save_pretrained(..., safe_serialization=True))")
        for name in wanted:
            (dest / name[len(root):]).write_bytes(zf.read(name))
    return config, processor


def _json(zf: zipfile.ZipFile, name: str) -> dict[str, Any]:
    if zf.getinfo(name).file_size > MAX_CONFIG_BYTES:
        raise ArchitectureError(f"{name} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        obj = json.loads(zf.read(name))
    except ValueError as exc:
        raise ArchitectureError(f"{name} is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ArchitectureError(f"{name} is not a JSON object")
    return obj


def load_hf(path: str, *, pool: str = "cls", arch_kwargs: dict[str, Any] | None = None,
            ) -> tuple[Architecture, dict[str, list[str]]]:
    """The transformers model of a zipped save_pretrained folder, loaded by transformers itself (its key
    conversions between checkpoint versions apply), offline, without custom code. Returns the architecture and
    transformers' loading info (missing / unexpected / mismatched keys), which the caller judges strictly."""
    import os
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    from repscope.architectures import RESERVED_KWARGS

    reserved = sorted(set(arch_kwargs or {}) & RESERVED_KWARGS)
    if reserved:
        raise ArchitectureError(f"arch_kwargs {reserved} are not allowed: the uploaded checkpoint is the weights")

    with tempfile.TemporaryDirectory(prefix="repscope-hf-") as tmp:
        config, processor = extract_hf_zip(path, Path(tmp))
        if "auto_map" in config:
            raise ArchitectureError("config.json names custom code (auto_map); repscope never runs model code from "
                                    "a checkpoint: use a model type transformers ships")
        model_type = config.get("model_type")
        try:
            model, info = AutoModel.from_pretrained(tmp, local_files_only=True, trust_remote_code=False,
                                                    use_safetensors=True, output_loading_info=True,
                                                    **(arch_kwargs or {}))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ArchitectureError(f"transformers cannot load this model (model_type {model_type!r}): "
                                    f"{' '.join(str(exc).split())[:400]}") from None
    cfg = model.config
    prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    prep = (Preprocessing.from_hf_processor_config(processor) if processor
            else _default_preprocessing(getattr(cfg, "image_size", None)))
    used = pool if model_type not in CONV_TYPES else "global average"
    arch = Architecture(name="hf", library="hf", model=HFEncoder(model.float().eval(), pool, prefix_tokens),
                        preprocessing=prep, pool=used, classifier=("classifier.",),
                        kwargs={"model_type": model_type, "class": type(model).__name__, **(arch_kwargs or {})},
                        target=model, filter_name="transformers from_pretrained")
    return arch, {k: sorted(map(str, info.get(k) or ())) for k in ("missing_keys", "unexpected_keys",
                                                                   "mismatched_keys")}


CONV_TYPES = ("resnet", "convnext", "convnextv2", "regnet", "efficientnet", "mobilenet_v2", "bit")


def _default_preprocessing(image_size: Any) -> Preprocessing:
    size = image_size if isinstance(image_size, int) else 224
    return Preprocessing(crop=(size, size), resize=size, source="ImageNet defaults at config.json image_size")


def load_hf_encoder(path, *, arch: str | None, arch_kwargs: dict | None, pool: str,
             output: str) -> tuple[nn.Module, LoadReport, Architecture]:
    """A Hugging Face zip: transformers loads it (its own key conversions), repscope judges the result strictly."""
    if arch not in (None, "hf"):
        raise ArchitectureError(f"a Hugging Face model zip is built from its config.json; arch {arch!r} cannot be "
                              "used with it (omit arch or pass 'hf')")
    if output != "backbone":
        raise ArchitectureError("output='projector' is not available for Hugging Face models")
    built, info = load_hf(str(path), pool=pool, arch_kwargs=arch_kwargs)
    report = LoadReport(layout=f"Hugging Face {built.kwargs['class']} (save_pretrained)",
                        architecture=built.describe())
    unexpected = []
    for key in info["unexpected_keys"]:
        rule = "classifier head" if key.startswith(built.classifier) else drop_rule(key)
        if rule is None:
            unexpected.append(key)
        else:
            report.dropped.setdefault(rule, []).append(key)
    missing = [k for k in info["missing_keys"] if not k.endswith(OPTIONAL_SUFFIXES)]
    if missing or unexpected or info["mismatched_keys"]:
        raise ArchitectureError(
            f"Hugging Face checkpoint does not fit its own config ({built.kwargs['class']}): "
            + "; ".join(f"{len(keys)} {what}: {', '.join(keys[:8])}" for what, keys in (
                ("missing", missing), ("unexpected", unexpected), ("of the wrong shape", info["mismatched_keys"]))
                if keys))
    report.loaded = [k for k in built.weights_module.state_dict() if k not in info["missing_keys"]]
    return Encoder(built.model).eval(), report, built
