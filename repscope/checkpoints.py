"""Check an uploaded encoder checkpoint without torch: which format it is, and that it holds only weights.

Formats (torch 2.x zip serialization unless noted):
- torchscript  `torch.jit.save`: <name>/code/ (TorchScript source), constants.pkl, data.pkl
- export       `torch.export.save` (.pt2): <name>/archive_format, models/*.json, data/weights/*
- state_dict   `torch.save(model.state_dict())` (.pt/.pth): <name>/data.pkl + data/<key> storages; the pickle is
               read with repscope.formats' whitelist unpickler (tensors, dicts, lists, numbers, strings only), so
               a pickle that names any other global is refused here, before a worker ever sees it
- safetensors  header-validated as in repscope.formats
- hf           a Hugging Face `save_pretrained` folder, zipped: config.json + *.safetensors (repscope.checkpoint_hf)
`named_arch`: a state_dict's top-level string `arch` (timm train.py, MoCo main_moco.py), or "hf" (config.json).
TorchScript and torch.export archives carry code. torch.export's is data here: its JSON graph names every
operator, so `vet_export_archive` refuses, before anything is stored, node targets outside the aten / prims
allowlist or in DENIED_OPS (files, processes, network), pickled weights / constants / sample inputs (torch.export.load
would unpickle them with weights_only=False), guards code (exec'd), shape expressions outside a small grammar
(sympify evals them) and AOTInductor packages (native code). TorchScript code can only be judged after torch
compiles it: the worker does that inside its sandbox (worker.models.ts_vetting, an operator allowlist on the
compiled graphs) and runs every checkpoint's forward there (worker.sandbox).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

from repscope.checkpoint_hf import inspect_hf_zip, looks_like_hf
from repscope.formats import (
    MAX_PICKLE_BYTES,
    FormatError,
    _check_zip_names,
    _open_safetensors,
    _Tensor,
    _WeightsOnlyUnpickler,
)

# what zipfile raises on a hostile archive besides BadZipFile (an unsupported zip version, a bad seek, ...)
ZIP_DAMAGE = (NotImplementedError, OSError, EOFError, ValueError, IndexError)
CHECKPOINT_FORMATS = ("torchscript", "export", "state_dict", "safetensors", "hf")
NEEDS_ARCH = frozenset({"state_dict", "safetensors"})
MAX_CHECKPOINT_MEMBERS = 100_000
NAMED_ARCH = re.compile(r"[A-Za-z0-9_.:\-/]{1,100}")  # a trainer's `arch` entry worth reading as a name

# Operators (namespace::name) refused in uploaded graphs although their namespace is allowed, from torch's
# schemas (torch._C._jit_get_all_schemas(), torch 2.13): a `str filename` argument (save, from_file), an RRef
# or rpc in the signature (distributed RPC), a call back into Python (PythonOp), and torch.export's _print.
# worker.models.ts_vetting applies the same list to TorchScript; tests/unit/test_ts_vetting.py re-derives it.
DENIED_OPS = frozenset({
    "aten::save", "aten::from_file", "aten::_print",
    "prim::rpc_async", "prim::rpc_sync", "prim::rpc_remote",
    "aten::to_here", "aten::local_value", "aten::owner", "aten::owner_name", "aten::is_owner",
    "aten::confirmed_by_owner",
    "prim::PythonOp", "prim::IgnoredPythonOp",
})  # fmt: skip
EXPORT_NAMESPACES = ("aten", "prims")

# torch.export archive vetting (layout from torch/export/pt2_archive/constants.py).
MAX_EXPORT_JSON_BYTES = 64 << 20
PT2_TARGETS = re.compile(
    r"^(?:torch\.ops\.(?P<ns>aten|prims)\.(?P<op>\w+)\.\w+|_operator\.\w+|math\.\w+|torch\.sym_\w+"
    r"|torch\.ops\.higher_order\.(?:wrap_with_set_grad_enabled|wrap_with_autocast))$"
)
PT2_EXPR_MAX_CHARS = 2000
PT2_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<num>\d+(?:\.\d+)?)|(?P<str>'[a-z]{1,8}\d+')"
    r"|(?P<op>[-+*/(),=%<>]))"
)
PT2_EXPR_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "True", "False", "oo", "zoo", "nan",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
    "Max", "Min", "Abs", "Mod", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
}  # fmt: skip
PT2_SYMBOL = re.compile(r"^[a-z]{1,8}\d+$")


# Inert metadata some trainers pickle next to the weights (DINO's args, Lightning's hyper-parameters).
METADATA_GLOBALS = {
    ("argparse", "Namespace"),
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning.fabric.utilities.data", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
}


class _Inert(dict):
    """Stands in for a metadata class: holds the pickled attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


class _CheckpointUnpickler(_WeightsOnlyUnpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in METADATA_GLOBALS:
            return _Inert
        return super().find_class(module, name)


class CheckpointError(FormatError):
    """The checkpoint is unreadable, of an unknown format, or holds more than weights."""


@dataclass(frozen=True)
class CheckpointInfo:
    format: str
    n_tensors: int | None  # state dicts and safetensors only
    n_params: int | None
    sample_keys: tuple[str, ...] = ()
    named_arch: str | None = None  # the architecture the file names: a state_dict's `arch` entry, "hf"

    @property
    def needs_arch(self) -> bool:
        return self.format in NEEDS_ARCH and self.named_arch is None

    def to_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        meta["sample_keys"] = list(self.sample_keys)
        return meta


def inspect_checkpoint(path: str | os.PathLike, filename: str | None = None) -> CheckpointInfo:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _inspect_zip(path)
    if len(head) == 8 and int.from_bytes(head, "little") < 100_000_000:
        try:
            with ExitStack() as stack:
                _open_safetensors(path, stack)
        except FormatError as exc:
            raise CheckpointError(f"not a valid .safetensors checkpoint: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - hostile bytes
            raise CheckpointError(f"not a valid .safetensors checkpoint: {type(exc).__name__}: {exc}") from None
        return _safetensors_info(path)
    if head[:1] == b"\x80":
        raise CheckpointError("legacy (non-zip) torch.save checkpoints are not supported; re-save with torch 1.6+")
    raise CheckpointError("unknown checkpoint format: expected TorchScript, torch.export .pt2, a state_dict "
                          "(.pt/.pth) or .safetensors")


def _inspect_zip(path) -> CheckpointInfo:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_zip_names(infos, MAX_CHECKPOINT_MEMBERS)
            names = [i.filename for i in infos]
            roots = {n.split("/", 1)[0] for n in names}
            prefix = next(iter(roots)) + "/" if len(roots) == 1 else None
            if prefix and f"{prefix}archive_format" in names:
                vet_export_archive(zf, prefix)
                return CheckpointInfo("export", None, None)
            if prefix and f"{prefix}constants.pkl" in names and any(n.startswith(f"{prefix}code/") for n in names):
                return CheckpointInfo("torchscript", None, None)
            if prefix and f"{prefix}data.pkl" in names:
                return _state_dict_info(path, zf, prefix)
            if looks_like_hf(names):
                hf = inspect_hf_zip(zf, names)
                return CheckpointInfo("hf", hf.n_tensors, hf.n_params, hf.sample_keys, named_arch="hf")
            if prefix is None:
                raise CheckpointError("checkpoint archive must have a single top-level folder (or be a Hugging "
                                      "Face model zip: config.json and *.safetensors)")
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"checkpoint is not a valid zip archive (truncated?): {exc}") from None
    except CheckpointError:
        raise
    except FormatError as exc:  # _check_zip_names: encrypted member, unsupported compression, duplicates
        raise CheckpointError(str(exc)) from None
    except ZIP_DAMAGE as exc:
        raise CheckpointError(f"checkpoint zip archive is damaged or unsupported ({type(exc).__name__}: {exc})") from None
    raise CheckpointError("zip archive is neither TorchScript, torch.export, a torch.save state_dict nor a Hugging "
                          "Face model (config.json and *.safetensors)")


def _state_dict_info(path, zf: zipfile.ZipFile, prefix: str) -> CheckpointInfo:
    info = zf.getinfo(f"{prefix}data.pkl")
    if info.file_size > 16 * MAX_PICKLE_BYTES:
        raise CheckpointError(f"data.pkl is {info.file_size} bytes: too large for a state_dict")
    try:
        with zf.open(info) as f:
            obj = _CheckpointUnpickler(f, path, zf, prefix).load()
    except FormatError as exc:
        raise CheckpointError(str(exc).replace(".pt file", "checkpoint")) from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes
        raise CheckpointError(f"unreadable state_dict pickle: {type(exc).__name__}: {exc}") from None
    tensors = dict(_walk(obj))
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors (expected a state_dict)")
    named = obj.get("arch") if isinstance(obj, dict) else None
    named = named.strip() if isinstance(named, str) and NAMED_ARCH.fullmatch(named.strip()) else None
    return CheckpointInfo("state_dict", len(tensors), sum(t.array.size for t in tensors.values()),
                          tuple(list(tensors)[:8]), named_arch=named)


def _walk(obj: Any) -> Iterator[tuple[str, _Tensor]]:
    """(dotted key, tensor) for every tensor in nested dicts (Lightning/DINO/MoCo save them nested).

    Iterative, and each dict / list / tuple is entered once: a hostile pickle's cycles, deep nesting or shared
    references (a 'billion laughs' of lists) cost no more than the pickle's own size."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, _Tensor):
            yield prefix.rstrip("."), node
            continue
        if isinstance(node, _Inert) or not isinstance(node, dict | list | tuple) or id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend(reversed([(f"{prefix}{key}.", value) for key, value in items]))


def _safetensors_info(path) -> CheckpointInfo:
    import math

    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return CheckpointInfo("safetensors", len(header), sum(math.prod(e["shape"]) for e in header.values()),
                          tuple(list(header)[:8]))


# ---------------------------------------------------------------- torch.export (.pt2), without torch


def _check_expr(expr: str) -> None:
    """A sympy expression string as torch.export writes it, from a grammar with no attribute access,
    no dunder names, no calls beyond the shape functions (sympify evals its input)."""
    if len(expr) > PT2_EXPR_MAX_CHARS or "**" in expr:
        raise CheckpointError(f"torch.export archive has an unsupported shape expression {expr[:80]!r}")
    pos = 0
    while pos < len(expr):
        m = PT2_EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                return
            raise CheckpointError(f"torch.export archive has an unsupported shape expression {expr[:80]!r}")
        name = m.group("name")
        if name is not None and name not in PT2_EXPR_NAMES and not PT2_SYMBOL.match(name):
            raise CheckpointError(f"torch.export shape expression uses {name!r}, which is not a shape symbol")
        pos = m.end()


def check_export_target(target: str) -> None:
    """A graph node's target: an aten / prims operator outside DENIED_OPS, or a Python operator / math / sym
    function (what torch.export writes for symbolic shapes)."""
    m = PT2_TARGETS.match(target)
    if m is None:
        raise CheckpointError(f"torch.export graph calls {target!r}; only torch.ops.aten / prims operators "
                              "are allowed")
    if m.group("ns") and f"{m.group('ns')}::{m.group('op')}" in DENIED_OPS:
        raise CheckpointError(f"torch.export graph calls {target!r}, which reads or writes files, processes or "
                              "the network; it is not allowed in uploaded models")


def _vet_program_json(obj: Any) -> None:
    """Walk a serialized ExportedProgram: every node target, every shape expression, no guards code."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str):
                    check_export_target(value)
                elif key == "expr_str" and isinstance(value, str):
                    _check_expr(value)
                elif key == "guards_code" and value:
                    raise CheckpointError("torch.export archive carries guards code; it is not executed here")
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _read_json(zf: zipfile.ZipFile, name: str) -> Any:
    if zf.getinfo(name).file_size > MAX_EXPORT_JSON_BYTES:
        raise CheckpointError(f"torch.export archive member {name!r} is too large")
    try:
        return json.loads(zf.read(name))
    except ValueError:
        raise CheckpointError(f"torch.export archive member {name!r} is not valid JSON") from None


def _vet_payload_config(zf: zipfile.ZipFile, name: str, what: str) -> None:
    config = _read_json(zf, name)
    config = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"torch.export {what} configuration {name!r} is malformed")
    for fqn, meta in config.items():
        if (not isinstance(meta, dict) or meta.get("use_pickle")
                or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))):
            raise CheckpointError(f"torch.export archive stores {what} {fqn!r} as a pickle or custom object; "
                                  "only plain tensors are accepted")


class _InMemoryUnpickler(_WeightsOnlyUnpickler):
    """The weights-only unpickler over a torch.save zip held in memory (sample inputs nested in a .pt2)."""

    def _read_storage(self, dtype, key: str, numel: int):  # noqa: ANN001, ANN202
        import numpy as np

        try:
            info = self._zf.getinfo(f"{self._prefix}data/{key}")
        except KeyError:
            raise FormatError(f"storage {key!r} is missing") from None
        if not key.isalnum() or info.file_size != numel * dtype.itemsize:
            raise FormatError(f"storage {key!r} is malformed")
        return np.frombuffer(self._zf.read(info), dtype)


def _vet_sample_inputs(zf: zipfile.ZipFile, name: str, rel: str) -> None:
    """Sample inputs are a torch.save zip inside the archive: weights-only (repscope.formats' unpickler)."""
    info = zf.getinfo(name)
    if info.file_size > 16 * MAX_PICKLE_BYTES:
        raise CheckpointError(f"torch.export sample inputs {rel!r} are too large")
    try:
        with zipfile.ZipFile(io.BytesIO(zf.read(name))) as inner:
            pkl = [n for n in inner.namelist() if n.endswith("/data.pkl")]
            if len(pkl) != 1:
                raise FormatError("no data.pkl")
            with inner.open(pkl[0]) as f:
                _InMemoryUnpickler(f, None, inner, pkl[0].removesuffix("data.pkl")).load()
    except (FormatError, zipfile.BadZipFile, *ZIP_DAMAGE) as exc:
        raise CheckpointError(f"torch.export sample inputs {rel!r} are not weights-only tensors ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes
        raise CheckpointError(f"torch.export sample inputs {rel!r} are unreadable ({type(exc).__name__})") from None


def vet_export_archive(zf: zipfile.ZipFile, prefix: str) -> None:
    """Refuse every part of a .pt2 (members under `prefix`) that torch.export.load would unpickle, exec, eval
    or dlopen, and every graph node outside the operator allowlist (module docstring)."""
    names = zf.namelist()
    if zf.read(f"{prefix}archive_format").strip() != b"pt2":
        raise CheckpointError("torch.export archive_format is not 'pt2'")
    if sum(n.endswith("archive_format") for n in names) != 1:
        raise CheckpointError("torch.export archive must contain exactly one archive_format entry")
    for name in names:
        rel = name.removeprefix(prefix)
        if rel.startswith(("data/aotinductor/", "data/mtia/")):
            raise CheckpointError("AOTInductor-compiled .pt2 packages (native code) are not accepted")
        if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith(".pt"):
            raise CheckpointError("torch.export archive stores pickled weights (legacy layout); re-save it")
        if rel.startswith("data/weights/") and rel.endswith("_weights_config.json"):
            _vet_payload_config(zf, name, "weight")
        elif rel.startswith("data/constants/") and rel.endswith("_constants_config.json"):
            _vet_payload_config(zf, name, "constant")
        elif rel.startswith("data/sample_inputs/"):
            _vet_sample_inputs(zf, name, rel)
        elif rel.startswith("models/") and rel.endswith(".json"):
            _vet_program_json(_read_json(zf, name))
