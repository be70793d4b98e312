"""Check an uploaded encoder checkpoint without torch: which format it is, and that it holds only weights.

Formats (torch 2.x zip serialization unless noted):
- torchscript  `torch.jit.save`: <name>/code/ (TorchScript source), constants.pkl, data.pkl
- export       `torch.export.save` (.pt2): <name>/archive_format, models/*.json, data/weights/*
- state_dict   `torch.save(model.state_dict())` (.pt/.pth): <name>/data.pkl + data/<key> storages; the pickle is
               read with repscope.formats' whitelist unpickler (tensors, dicts, lists, numbers, strings only), so
               a pickle that names any other global is refused here, before a worker ever sees it
- safetensors  header-validated as in repscope.formats
TorchScript and torch.export archives carry code (TorchScript source; a graph, guard code and pickled sample
inputs), and torch's own loaders will run some of it: `torch.export.load` unpickles with weights_only=False and
exec()s guard code, and TorchScript can call torch.save. The API checks only their layout here; the worker
vets every such archive before torch opens it (worker.models.loading: vet_torchscript_archive,
vet_export_archive) and refuses file, process and network operations. Run workers without credentials.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

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
CHECKPOINT_FORMATS = ("torchscript", "export", "state_dict", "safetensors")
NEEDS_ARCH = frozenset({"state_dict", "safetensors"})
MAX_CHECKPOINT_MEMBERS = 100_000


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

    @property
    def needs_arch(self) -> bool:
        return self.format in NEEDS_ARCH

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
            if len(roots) != 1:
                raise CheckpointError("checkpoint archive must have a single top-level folder")
            prefix = next(iter(roots)) + "/"
            if f"{prefix}archive_format" in names:
                return CheckpointInfo("export", None, None)
            if f"{prefix}constants.pkl" in names and any(n.startswith(f"{prefix}code/") for n in names):
                return CheckpointInfo("torchscript", None, None)
            if f"{prefix}data.pkl" in names:
                return _state_dict_info(path, zf, prefix)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"checkpoint is not a valid zip archive (truncated?): {exc}") from None
    except CheckpointError:
        raise
    except FormatError as exc:  # _check_zip_names: encrypted member, unsupported compression, duplicates
        raise CheckpointError(str(exc)) from None
    except ZIP_DAMAGE as exc:
        raise CheckpointError(f"checkpoint zip archive is damaged or unsupported ({type(exc).__name__}: {exc})") from None
    raise CheckpointError("zip archive is neither TorchScript, torch.export nor a torch.save state_dict")


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
    return CheckpointInfo("state_dict", len(tensors), sum(t.array.size for t in tensors.values()),
                          tuple(list(tensors)[:8]))


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
    import json
    import math

    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__", None)
    return CheckpointInfo("safetensors", len(header), sum(math.prod(e["shape"]) for e in header.values()),
                          tuple(list(header)[:8]))
