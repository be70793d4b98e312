"""Load an uploaded encoder checkpoint into an eval-mode ``nn.Module``.

Formats (detected from the file's content; a format name given as ``fmt`` must agree, an extension only hints):
  torchscript  ``torch.jit.save`` zip: ``<root>/code/**.py`` + ``<root>/constants.pkl`` + ``data.pkl``
  export       ``torch.export.save`` .pt2 zip: ``<root>/archive_format`` ("pt2"), ``<root>/models/*.json``
  state_dict   ``torch.save(state_dict)`` zip (``<root>/data.pkl``) or legacy raw pickle, plus an architecture
  safetensors  8-byte little-endian header length + JSON header, plus an architecture

Uploaded files are untrusted (DESIGN.md). What runs, per format:
  * state_dict: ``torch.load(weights_only=True)`` only (tensors, containers, numbers, plus the inert
    argparse.Namespace / Lightning AttributeDict of training metadata); any other pickle global is refused
    before anything is called. safetensors holds no code at all.
  * torchscript: ``torch.jit.load`` runs no Python pickle (its C++ unpickler builds TorchScript types only),
    but the archive's TorchScript code *does* run, at load (``__setstate__``) and in forward, and TorchScript
    can read and write files (``torch.from_file``, ``torch.save``) and reach other op namespaces (c10d network
    ops). After loading, every compiled graph goes through an operator allowlist (worker.models.ts_vetting:
    aten / prim only, file / RPC / Python ops refused) before forward runs.
  * export: ``torch.export.load`` is NOT safe on its own for untrusted files (its docstring says so):
    pickled weights / constants / sample inputs fall back to ``torch.load(weights_only=False)``,
    ``guards_code`` is ``exec``-ed, shape expressions go through ``sympy.sympify`` (``eval``), node targets
    resolve any ``torch.*`` attribute (``torch.os.system``), and AOTInductor packages hold shared
    libraries. ``vet_export_archive`` (torch-free, repscope.checkpoints, also run by the API at upload) refuses
    all of these before torch sees the file; after loading, every graph node must be an aten / prims operator.
  Neither interpreter is a sandbox (both are large C++ parsers of hostile bytes): the worker loads and runs
  uploaded checkpoints only inside worker.sandbox (no secrets, no network, writes only to a scratch dir).
  ``load_encoder`` in-process is for one's own files (``repscope eval``): TorchScript ``__setstate__`` has run
  by the time its graphs are vetted.

State-dict normalisation (solo-learn, DINO, MoCo, Lightning layouts): unwrap nested checkpoints
(NEST_KEYS), strip wrapper prefixes (STRIP_PREFIXES, repeatedly, keeping whichever form the architecture
knows), drop heads and projectors (HEAD_PREFIXES), load with strict=False and refuse when any encoder weight
is missing or has the wrong shape — never evaluate random weights.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import struct
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .archs import ARCHS, OUTPUTS, POOLS, TOKEN_ARCHS, get_arch, infer_arch_kwargs
from .features import encode

FORMATS = ("torchscript", "export", "state_dict", "safetensors")
FORMAT_ALIASES = {
    "ts": "torchscript", "jit": "torchscript", "torchscript": "torchscript",
    "pt2": "export", "export": "export",
    "pt": "state_dict", "pth": "state_dict", "ckpt": "state_dict", "state_dict": "state_dict",
    "safetensors": "safetensors",
}  # fmt: skip
AMBIGUOUS_EXTENSIONS = ("pt", "pth", "ckpt", "bin")
NEEDS_ARCH = ("state_dict", "safetensors")

# Nested checkpoints: Lightning / solo-learn "state_dict", timm / DeiT "model", DINO "teacher" (DINO's own
# eval_linear.py default --checkpoint_key) then "student", plain training loops.
NEST_KEYS = ("state_dict", "model", "teacher", "student", "model_state_dict", "model_state", "net", "network")
# Wrapper prefixes: DDP "module.", solo-learn / DINO "backbone.", "encoder.", MoCo "encoder_q.", "student.".
STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "encoder_q.", "student.")
# Heads and projectors that an encoder evaluation drops (classifier, DINO head, SimCLR/BYOL projector...).
HEAD_PREFIXES = ("fc.", "head.", "heads.", "projector.", "projection_head.", "prototypes.", "predictor.")
OUTPUT_KEEPS = {"backbone": (), "projector": ("projector.",), "logits": ("fc.", "head.")}
OPTIONAL_SUFFIXES = (".num_batches_tracked",)  # BatchNorm counters; absent from many released checkpoints
# Inert training metadata that weights-only unpickling may meet next to the weights.
SAFE_METADATA_GLOBALS = [argparse.Namespace]
ATTRIBUTE_DICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)

MAX_CODE_BYTES = 64 << 20  # one TorchScript code file


class CheckpointError(ValueError):
    """An uploaded checkpoint cannot be used; the message says why in plain words (becomes the 4xx detail)."""


@dataclass
class LoadReport:
    """What happened to a checkpoint's keys (state_dict formats) or what the module is (graph formats)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    dropped: list[str] = field(default_factory=list)  # heads / projectors removed on request
    renamed_prefixes: dict[str, int] = field(default_factory=dict)  # stripped prefix -> number of keys
    source_key: str | None = None  # nested checkpoint entry used, e.g. "state_dict" or "teacher"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, limit: int = 12) -> str:
        def show(keys: list[str]) -> str:
            more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "dropped"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name}: {show(keys)}")
        if self.renamed_prefixes:
            parts.append(
                "stripped prefixes " + ", ".join(f"{p!r} x{n}" for p, n in self.renamed_prefixes.items())
            )
        if self.source_key:
            parts.append(f"weights from checkpoint[{self.source_key!r}]")
        return "; ".join(parts)


@dataclass
class LoadedEncoder:
    """An eval-mode encoder and how it was obtained.

    input_size -- (H, W) the module needs (a ViT's native size, an exported program's static shape), or None
                  when any size works; pass it to ``embed(image_size=...)``.
    """

    module: nn.Module
    report: LoadReport
    fmt: str
    arch: str | None
    pool: str = "cls"
    output: str = "backbone"
    input_size: tuple[int, int] | None = None

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
    if any(n.endswith(".npy") for n in names):
        raise CheckpointError("file is an .npz of arrays, not a checkpoint (upload it as embeddings)")
    raise CheckpointError("zip archive is neither TorchScript, torch.export (.pt2) nor torch.save")


def detect_checkpoint_format(path: str | os.PathLike, filename: str | None = None) -> str:
    """One of FORMATS from the file's bytes (the extension is not trusted; ``filename`` is unused but kept
    for symmetry with repscope.formats.detect_format)."""
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
        "a torch.save'd state_dict (.pt/.pth) or .safetensors"
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


# ---------------------------------------------------------------- TorchScript


def _load_torchscript(path, device: torch.device, vet_ops: bool = True) -> nn.Module:
    from . import ts_vetting

    with zipfile.ZipFile(path) as zf:
        big = next((i.filename for i in zf.infolist() if "/code/" in i.filename and i.file_size > MAX_CODE_BYTES),
                   None)
    if big:
        raise CheckpointError(f"TorchScript code file {big!r} is too large")
    try:
        return ts_vetting.load_vetted(path, device) if vet_ops else torch.jit.load(str(path), map_location=device)
    except ts_vetting.ForbiddenOp as e:
        raise CheckpointError(str(e)) from e
    except Exception as e:  # RuntimeError from the TorchScript importer on malformed archives
        raise CheckpointError(f"invalid TorchScript archive: {type(e).__name__}: {_short(e, 600)}") from e


# ---------------------------------------------------------------- torch.export (.pt2)


def vet_export_archive(path: str | os.PathLike) -> None:
    """Refuse every part of a .pt2 that torch.export.load would unpickle, exec or eval, and graph nodes outside
    the allowlist: repscope.checkpoints' torch-free check (the API's at upload), then torch's own weights-only
    loader over the sample inputs."""
    from repscope import checkpoints

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        fmt_files = [n for n in names if n.endswith("archive_format")]
        if len(fmt_files) != 1:
            raise CheckpointError("torch.export archive must contain exactly one archive_format entry")
        root = fmt_files[0].removesuffix("archive_format")
        try:
            checkpoints.vet_export_archive(zf, root)
        except checkpoints.CheckpointError as e:
            raise CheckpointError(str(e)) from e
        for name in names:
            if name.startswith(f"{root}data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception as e:
                    raise CheckpointError(
                        f"torch.export sample inputs {name!r} are not weights-only tensors ({_short(e)})"
                    ) from e


def _check_graph_ops(gm: nn.Module) -> None:
    """Second line after the archive check: every call in the loaded graph is an aten / prims operator outside
    DENIED_OPS (the allowlist of repscope.checkpoints), a Python operator or a higher-order wrapper."""
    from repscope.checkpoints import DENIED_OPS, EXPORT_NAMESPACES

    for sub in gm.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                if target.namespace not in EXPORT_NAMESPACES or target._schema.name in DENIED_OPS:
                    raise CheckpointError(f"torch.export graph calls {target}, which is not allowed")
            elif getattr(target, "__module__", None) not in (
                "_operator",
                "operator",
                "math",
                "torch",
                "torch.fx.experimental.sym_node",
            ):
                if not isinstance(target, torch._ops.HigherOrderOperator):
                    raise CheckpointError(f"torch.export graph calls {target!r}, which is not allowed")


class FixedBatch(nn.Module):
    """Run a module compiled for a static batch size on any batch: chunk, zero-pad the last chunk, trim."""

    def __init__(self, inner: nn.Module, batch: int, pool: str = "cls"):
        super().__init__()
        self.inner, self.batch, self.pool = inner, batch, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start : start + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros((self.batch - n, *chunk.shape[1:]))])
            outs.append(encode(self.inner, chunk, pool=self.pool)[:n])
        return torch.cat(outs)


def _static_input(ep) -> tuple[int | None, tuple[int, int] | None]:
    """(static batch or None, static (H, W) or None) of an exported program's first user input."""
    names = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            val = node.meta.get("val")
            shape = tuple(getattr(val, "shape", ()))
            if len(shape) != 4:
                return None, None
            batch = shape[0] if isinstance(shape[0], int) else None
            hw = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
            return batch, hw
    return None, None


def _load_export(
    path, device: torch.device, pool: str, vet_ops: bool = True
) -> tuple[nn.Module, tuple[int, int] | None, list[str]]:
    vet_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"invalid torch.export archive: {type(e).__name__}: {_short(e)}") from e
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    batch, hw = _static_input(ep)
    module = ep.module()
    if vet_ops:
        _check_graph_ops(module)
    notes = []
    if batch is not None:
        notes.append(f"exported with a static batch of {batch}: batches are padded to it")
        module = FixedBatch(module, batch, pool)
    return module, hw, notes


# ---------------------------------------------------------------- state_dicts


class _InertDict(dict):
    """Stand-in for Lightning's AttributeDict (hyper-parameters): a plain dict, no behaviour."""


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _read_checkpoint(path, fmt: str) -> Any:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"invalid .safetensors file: {_short(e)}") from e
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
            raise CheckpointError(f"refused to unpickle checkpoint: {_short(detail)}") from e
        raise CheckpointError(f"invalid torch.save checkpoint: {type(e).__name__}: {_short(e)}") from e


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_checkpoint(obj: Any, key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """The flat {name: tensor} dict inside a (possibly nested) checkpoint, and the path of keys taken."""
    path: list[str] = []
    for _ in range(4):
        if not isinstance(obj, dict):
            raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict")
        if key is not None and not path:
            if key not in obj:
                raise CheckpointError(f"checkpoint has no entry {key!r}; it has {sorted(map(str, obj))[:20]}")
            path.append(key)
            obj = obj[key]
            continue
        if _is_tensor_dict(obj):
            break
        nested = next((k for k in NEST_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        path.append(nested)
        obj = obj[nested]
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    )
    if not tensors:
        raise CheckpointError(
            "checkpoint contains no tensors (expected a state_dict or one nested under "
            f"one of {list(NEST_KEYS)})"
        )
    return tensors, ".".join(path) or None


def _canonical_key(key: str, known: set[str]) -> tuple[str, str]:
    """Strip STRIP_PREFIXES repeatedly; keep the first form the model knows, else the fully stripped one.
    Returns (new key, stripped prefix)."""
    forms = [key]
    while True:
        prefix = next((p for p in STRIP_PREFIXES if forms[-1].startswith(p)), None)
        if prefix is None:
            break
        forms.append(forms[-1][len(prefix) :])
    chosen = next((f for f in forms if f in known), forms[-1])
    return chosen, key[: len(key) - len(chosen)]


def normalize_state_dict(
    sd: dict[str, torch.Tensor],
    known: set[str] | None = None,
    *,
    drop_heads: bool = True,
    keep: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, int]]:
    """Strip wrapper prefixes and drop heads. Returns (state_dict, dropped keys, {stripped prefix: count})."""
    known = known or set()
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    renamed: Counter[str] = Counter()
    for key, value in sd.items():
        new, prefix = _canonical_key(key, known)
        if prefix:
            renamed[prefix] += 1
        if drop_heads and new.startswith(HEAD_PREFIXES) and not new.startswith(keep):
            dropped.append(new)
            continue
        out[new] = value
    return out, dropped, dict(renamed)


def _required(key: str, output: str) -> bool:
    """Is a model key needed to compute the requested output? (encoder always; projector / head on request)"""
    if key.endswith(OPTIONAL_SUFFIXES):
        return False
    if key.startswith(HEAD_PREFIXES):
        return key.startswith(OUTPUT_KEEPS[output])
    return True


def _load_state_dict_model(
    path,
    fmt: str,
    arch: str,
    *,
    pool: str,
    drop_heads: bool,
    output: str,
    arch_kwargs: dict | None,
    checkpoint_key: str | None,
) -> tuple[nn.Module, LoadReport]:
    raw, source = unwrap_checkpoint(_read_checkpoint(path, fmt), checkpoint_key)
    if arch not in ARCHS:
        get_arch(arch)  # raises the "unknown architecture" error for non-timm names
    # Normalise against the names of a default-sized model first, to infer sizes from the right keys.
    probe_keys = _arch_keys(arch)
    keep = OUTPUT_KEEPS[output]
    sd, dropped, renamed = normalize_state_dict(raw, probe_keys, drop_heads=drop_heads, keep=keep)
    kwargs = {**infer_arch_kwargs(arch, sd), **(arch_kwargs or {})}
    if arch in ARCHS:
        if arch in TOKEN_ARCHS:
            kwargs.setdefault("pool", pool)
        kwargs["output"] = output
        if output == "projector" and "projector_dims" not in kwargs:
            raise CheckpointError(
                "output='projector' was requested but the checkpoint has no projector.* weights"
            )
    report = LoadReport(
        dropped=dropped, renamed_prefixes=renamed, source_key=source, arch_kwargs=dict(kwargs)
    )
    if arch in TOKEN_ARCHS and "embed_dim" in kwargs and "num_heads" not in (arch_kwargs or {}):
        default = 384 if arch == "vit_small" else 192
        if kwargs["embed_dim"] != default:
            report.warnings.append(
                f"num_heads={kwargs['num_heads']} guessed from width {kwargs['embed_dim']} (64 per head); "
                "pass arch_kwargs={'num_heads': ...} if the model used another head count"
            )
    try:
        model = get_arch(arch, **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build architecture {arch!r} with {kwargs}: {e}") from e
    target = model.state_dict()
    sd, dropped2, _ = normalize_state_dict(raw, set(target), drop_heads=drop_heads, keep=keep)
    report.dropped = dropped2
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in sd.items() if k in target and v.shape != target[k].shape]  # fmt: skip
    bad = [m for m in mismatched if _required(m.split(":")[0], output)]
    if bad:
        raise CheckpointError(
            f"checkpoint does not fit architecture {arch!r}: shape mismatch for "
            f"{len(bad)} tensors ({'; '.join(bad[:8])})"
        )
    for m in mismatched:  # a head of another size that the requested output does not use
        key = m.split(":")[0]
        del sd[key]
        report.dropped.append(key)
    result = model.load_state_dict(sd, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    report.loaded = [k for k in sd if k in target]
    needed = [k for k in report.missing if _required(k, output)]
    if needed:
        raise CheckpointError(
            f"checkpoint is missing {len(needed)} encoder weights of {arch!r} "
            f"(refusing to evaluate random weights): {', '.join(needed[:12])}"
            f"{' ...' if len(needed) > 12 else ''}. Report: {report.summary()}"
        )
    return model, report


def _arch_keys(arch: str) -> set[str]:
    """Parameter names of an architecture, from a meta-device instance (no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return set(get_arch(arch).state_dict())
    except Exception:  # a timm model that cannot be built on meta
        return set()


# ---------------------------------------------------------------- entry point


def load_encoder(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    arch: str | None = None,
    pool: str = "cls",
    drop_heads: bool = True,
    output: str = "backbone",
    arch_kwargs: dict | None = None,
    checkpoint_key: str | None = None,
    device: str | torch.device | None = None,
    vet_ops: bool = True,
) -> LoadedEncoder:
    """Load a checkpoint file as an eval-mode encoder on ``device`` (default CPU).

    fmt            -- optional; must agree with the detected format (FORMATS or an alias: pt2, pth, ...)
    arch           -- architecture name for state_dict / safetensors (ARCHS or a timm name); sizes such as
                      width, depth, patch size and projector dims are read off the weights; arch_kwargs override
    pool           -- ViT pooling, and how token outputs of TorchScript / export modules are reduced
    drop_heads     -- drop classifier / projector / predictor weights (HEAD_PREFIXES) before loading
    output         -- "backbone" (default), "projector" or "logits" (built-in architectures only)
    checkpoint_key -- nested entry to use (e.g. "student"); default: the first of NEST_KEYS present
    vet_ops        -- the operator allowlist on TorchScript / export graphs; off only in tests that show what
                      the sandbox alone stops
    Raises CheckpointError for anything unusable; never evaluates an encoder with missing weights.
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
    input_size: tuple[int, int] | None = None
    if kind in NEEDS_ARCH:
        if not arch:
            raise CheckpointError(
                f"a {kind} checkpoint holds only weights: an architecture name is required "
                f"(built-ins: {sorted(ARCHS)})"
            )
        try:
            module, report = _load_state_dict_model(
                path, kind, arch, pool=pool, drop_heads=drop_heads, output=output,
                arch_kwargs=arch_kwargs, checkpoint_key=checkpoint_key,
            )  # fmt: skip
        except ValueError as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(str(e)) from e
        if getattr(module, "img_size", None) and hasattr(module, "patch_size"):
            input_size = (module.img_size, module.img_size)
        module = module.to(dev)
    else:
        if output != "backbone":
            raise CheckpointError(
                f"output={output!r} needs a state_dict and an architecture; a {kind} "
                "module is evaluated through its own forward"
            )
        if kind == "torchscript":
            module = _load_torchscript(path, dev, vet_ops)
            report = LoadReport(loaded=list(module.state_dict()))
        else:
            module, input_size, notes = _load_export(path, dev, pool, vet_ops)
            report = LoadReport(loaded=list(module.state_dict()), warnings=notes)
    _set_eval(module)
    return LoadedEncoder(module, report, kind, arch, pool=pool, output=output, input_size=input_size)


def _set_eval(module: nn.Module) -> None:
    """eval() where the module supports it (exported GraphModules bake train/eval in and refuse .eval())."""
    try:
        module.eval()
    except NotImplementedError:
        pass
