"""A Hugging Face model zip, checked without torch or transformers (issue #18): what `save_pretrained` writes.

Layout (transformers `PreTrainedModel.save_pretrained(folder, safe_serialization=True)`, zipped): config.json
and model.safetensors (or shards model-0000i-of-0000n.safetensors + model.safetensors.index.json), at the zip's
root or in its one top folder. The worker builds the model with AutoModel from config.json, offline, never with
trust_remote_code; so a config naming custom code (`auto_map`) is refused here, and pickled weights
(pytorch_model.bin) are never loaded. Safetensors headers are validated as repscope.formats does a single file.
Errors are FormatError (repscope.checkpoints turns them into CheckpointError).
"""

from __future__ import annotations

import json
import math
import posixpath
import struct
import zipfile
from dataclasses import dataclass

from repscope.formats import MAX_SAFETENSORS_HEADER, FormatError, _st_entry

MAX_CONFIG_BYTES = 1 << 20
CONFIG = "config.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", ".bin", ".pt", ".pth", ".ckpt")
SAVE_HINT = "save the model with model.save_pretrained(folder, safe_serialization=True) and zip the folder"


@dataclass(frozen=True)
class HFZipInfo:
    model_type: str
    n_tensors: int
    n_params: int
    sample_keys: tuple[str, ...]


def looks_like_hf(names: list[str]) -> bool:
    """A zip with a config.json or a *.safetensors at depth ≤ 1, or a pytorch_model*.bin: meant as an HF model."""
    for name in names:
        depth, base = name.count("/"), posixpath.basename(name)
        if depth <= 1 and (base == CONFIG or base.endswith(".safetensors")
                           or (base.startswith("pytorch_model") and base.endswith(".bin"))):
            return True
    return False


def _model_folder(names: list[str]) -> str | None:
    """'' when config.json is at the root, '<top>/' when the zip has one top folder holding it, else None."""
    if CONFIG in names:
        return ""
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) == 1 and f"{next(iter(roots))}/{CONFIG}" in names:
        return f"{next(iter(roots))}/"
    return None


def _read_config(zf: zipfile.ZipFile, name: str) -> str:
    if zf.getinfo(name).file_size > MAX_CONFIG_BYTES:
        raise FormatError(f"{name} is larger than {MAX_CONFIG_BYTES} bytes; a model config is a small JSON object")
    with zf.open(name) as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    try:
        config = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{name} must be a JSON object")
    if "auto_map" in config:
        raise FormatError(f"{name} has 'auto_map': the model needs its own Python code (trust_remote_code), which "
                          "repscope never runs; upload a model whose type transformers ships, or its state_dict "
                          "with an 'arch'")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise FormatError(f"{name} has no string 'model_type'; {SAVE_HINT}")
    return model_type


def _no_constant(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def _safetensors_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, tuple]:
    """{tensor: (dtype, bf16, shape, begin, end)} of one member, its spans tiling the data exactly."""
    with zf.open(info) as f:
        head = f.read(8)
        if len(head) != 8:
            raise FormatError(f"{info.filename} is truncated")
        (header_len,) = struct.unpack("<Q", head)
        if header_len >= MAX_SAFETENSORS_HEADER or 8 + header_len > info.file_size:
            raise FormatError(f"{info.filename}: safetensors header length {header_len} is not sane")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{info.filename}: safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{info.filename}: safetensors header must be a JSON object")
    header.pop("__metadata__", None)
    entries = {name: _st_entry(name, e) for name, e in header.items()}
    expected, data_len = 0, info.file_size - 8 - header_len
    for begin, end, name in sorted((e[3], e[4], name) for name, e in entries.items()):
        if begin != expected:
            raise FormatError(f"{info.filename}: tensor {name!r} data_offsets are not contiguous")
        expected = end
    if expected != data_len:
        raise FormatError(f"{info.filename}: the tensors span {expected} bytes, the data is {data_len} bytes")
    return entries


def inspect_hf_zip(zf: zipfile.ZipFile, names: list[str]) -> HFZipInfo:
    """Check an HF model zip (module docstring); FormatError naming the problem otherwise."""
    folder = _model_folder(names)
    weights = [n for n in names if n.endswith(".safetensors")]
    if folder is None:
        what = "*.safetensors" if weights else "weights"
        raise FormatError(f"a Hugging Face model zip needs config.json (at the zip's root or in its one top folder) "
                          f"next to its {what}; {SAVE_HINT}")
    weights = [n for n in weights if posixpath.dirname(n) == folder.rstrip("/")]
    if not weights:
        pickled = [n for n in names if n.startswith(folder) and n.endswith(PICKLED_WEIGHTS)]
        if pickled:
            raise FormatError(f"{pickled[0]} is a pickle, which repscope does not load; {SAVE_HINT}")
        raise FormatError(f"a Hugging Face model zip needs at least one *.safetensors next to {folder}{CONFIG}")
    model_type = _read_config(zf, folder + CONFIG)
    tensors: dict[str, tuple] = {}
    for name in sorted(weights):
        for key, entry in _safetensors_header(zf, zf.getinfo(name)).items():
            if key in tensors:
                raise FormatError(f"tensor {key!r} is in more than one safetensors file")
            tensors[key] = entry
    if not tensors:
        raise FormatError("the model's safetensors files hold no tensors")
    return HFZipInfo(model_type, len(tensors), sum(math.prod(e[2]) for e in tensors.values()),
                     tuple(list(tensors)[:8]))
