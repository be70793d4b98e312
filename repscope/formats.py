"""Parse and validate uploaded embeddings files (.npy, .npz, .safetensors, .pt).

Standard library and numpy only: the API server imports this module and must never import torch.
Uploads are untrusted, so nothing is ever unpickled except through a whitelist of tensor globals,
every size declared in a header is checked against the file before any data is read, and large
arrays are memory-mapped and scanned in row chunks.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.lib import format as npformat


class FormatError(ValueError):
    """Raised for any invalid or unsupported file; message names the problem in plain words (it becomes the HTTP 4xx detail)."""


FORMATS = ("npy", "npz", "safetensors", "pt")
KNOWN_KEYS = ("embeddings", "labels", "split", "poison", "views")
MAX_ZIP_MEMBERS = 16
MAX_PT_MEMBERS = 64
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_PICKLE_BYTES = 1_000_000
_CHUNK_ELEMENTS = 1 << 24  # cap on elements scanned at once, whatever chunk_rows says
_UNKNOWN = "unknown file format: expected .npy, .npz, .safetensors or .pt"
_LEGACY = (
    "legacy torch.save format is not supported; "
    "save with torch.save(..., _use_new_zipfile_serialization=True)"
)


@dataclass(frozen=True)
class EmbeddingsInfo:
    format: str
    n: int
    d: int
    dtype: str
    has_labels: bool
    has_split: bool
    has_poison: bool
    n_classes: int | None
    extra_keys: tuple[str, ...] = ()
    n_views: int = 0  # q augmented views per row in a 'views' array (N x q x D), for LiDAR
    # sha256 of the labels as little-endian int64 (whatever their stored dtype): the dataset identity that
    # cross-project leaderboards group by (backend.services.leaderboards)
    labels_sha256: str | None = None

    def to_meta(self) -> dict:
        meta = asdict(self)
        meta["extra_keys"] = list(self.extra_keys)
        return meta


@dataclass
class EmbeddingsArrays:
    embeddings: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray | None
    poison: np.ndarray | None
    views: np.ndarray | None = None  # N x q x D embeddings of q augmented views per row


@dataclass(frozen=True)
class ZipLimits:
    """Caps on an .npz read from its zip directory before any member is inflated (zip bombs). Defaults are
    Settings' defaults; ``from_settings`` applies a deployment's REPSCOPE_MAX_NPZ_EXPANDED_BYTES,
    REPSCOPE_MAX_ZIP_RATIO and REPSCOPE_ZIP_RATIO_MIN_BYTES."""

    max_expanded_bytes: int = 8 * 1024**3  # declared uncompressed total of all members
    max_ratio: float = 200.0  # uncompressed / compressed, per member
    ratio_min_bytes: int = 16 * 1024**2  # smaller members may compress better (sorted int64 labels reach ~1000x)

    @classmethod
    def from_settings(cls, settings: Any = None) -> ZipLimits:
        """The limits of `settings` (default: this process's REPSCOPE_* environment)."""
        if settings is None:
            from repscope.settings import get_settings

            settings = get_settings()
        total = settings.max_npz_expanded_bytes
        return cls(max_expanded_bytes=settings.max_upload_bytes if total is None else total,
                   max_ratio=settings.max_zip_ratio, ratio_min_bytes=settings.zip_ratio_min_bytes)


def check_npz_directory(infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse an archive whose central directory declares more than `limits` allow; nothing is inflated.

    zipfile never returns more than a member's declared ``file_size`` (it stops there and checks the CRC),
    and every .npy header is checked against that size before an array is allocated, so the declared sizes
    bound what reading can expand to."""
    total = sum(i.file_size for i in infos)
    if total > limits.max_expanded_bytes:
        raise FormatError(
            f".npz expands to {total} bytes, more than the limit of {limits.max_expanded_bytes} "
            "(as its zip directory declares; nothing was inflated)"
        )
    for info in infos:
        if info.file_size < max(limits.ratio_min_bytes, 1):
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise FormatError(
                f"zip member {info.filename!r} expands {ratio:.0f}x ({info.compress_size} bytes compressed to "
                f"{info.file_size}); at most {limits.max_ratio:g}x is accepted, refused as a likely zip bomb "
                "(save it uncompressed with numpy.savez if the data really is this repetitive)"
            )


@dataclass
class _Member:
    """One array of a file, known by its header; data is read only through ``load`` / ``chunks``."""

    shape: tuple[int, ...]
    dtype: np.dtype  # as stored; bfloat16 is stored as uint16
    load: Callable[[], np.ndarray]  # whole array, a memmap (or a view of one) where possible
    bf16: bool = False
    chunks: Callable[[int], Iterator[np.ndarray]] | None = None  # streaming row reader

    @property
    def dtype_name(self) -> str:
        return "bfloat16" if self.bf16 else self.dtype.name

    def row_chunks(self, rows: int) -> Iterator[np.ndarray]:
        if self.chunks is not None:
            yield from self.chunks(rows)
            return
        arr = self.load()
        for start in range(0, self.shape[0], rows):
            yield arr[start : start + rows]


def _bf16_to_f32(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _memmap(path, dtype, offset: int, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def _check_truncated(declared: int, available: int) -> None:
    if declared > available:
        available = max(available, 0)
        raise FormatError(
            f"file is truncated: header declares {declared} bytes of data, file has {available}"
        )


# ---------------------------------------------------------------- detection


def detect_format(path: str | os.PathLike, filename: str | None = None) -> str:
    """Return one of FORMATS from the file's magic bytes; the file name's extension only breaks ties."""
    hint = os.path.splitext(filename or os.fspath(path))[1].lower().lstrip(".")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _detect_zip(path, hint)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise FormatError(f"file is a raw pickle, not a tensor archive: {_LEGACY}")
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < MAX_SAFETENSORS_HEADER:
        return "safetensors"
    raise FormatError(_UNKNOWN)


def _detect_zip(path, hint: str) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except Exception as e:  # BadZipFile, NotImplementedError, OSError, ... from a damaged archive
        raise FormatError(f"zip archive is corrupt or truncated ({type(e).__name__}: {e})") from e
    if any(n.endswith("/data.pkl") for n in names):
        return "pt"
    if any(n.endswith(".npy") for n in names):
        return "npz"
    if hint in ("npz", "pt", "pth"):
        return "pt" if hint == "pth" else hint
    raise FormatError(_UNKNOWN)


# ---------------------------------------------------------------- .npy / .npz (NumPy NEP 1 format)


def _read_npy_header(fp, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read an .npy header (NEP 1, versions 1.0 and 2.0) and refuse object / structured dtypes."""
    version = npformat.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npformat.read_array_header_2_0(fp)
    else:
        raise FormatError(f"{what}: unsupported .npy format version {version}")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise FormatError(f"{what} has dtype {dtype}; object and structured arrays are not accepted")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _open_npy(path, stack: ExitStack) -> tuple[dict[str, _Member], tuple[str, ...]]:
    """A single N x D array in the NumPy .npy format (NEP 1), memory-mapped."""
    with open(path, "rb") as f:
        shape, _, dtype = _read_npy_header(f, "embeddings")
        offset = f.tell()
    _check_truncated(math.prod(shape) * dtype.itemsize, os.path.getsize(path) - offset)

    def load() -> np.ndarray:
        return np.load(path, mmap_mode="r", allow_pickle=False)

    return {"embeddings": _Member(shape, dtype, load)}, ()


def _zip_data_offset(path, info: zipfile.ZipInfo) -> int:
    """Offset of a member's raw bytes: after its local file header (fixed 30 bytes + name + extra)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = struct.unpack("<4s5H3I2H", f.read(30))
    if fields[0] != b"PK\x03\x04":
        raise FormatError(f"zip member {info.filename!r} has a corrupt local header")
    start = info.header_offset + 30 + fields[9] + fields[10]
    _check_truncated(start + info.compress_size, os.path.getsize(path))
    return start


def _check_zip_names(infos: list[zipfile.ZipInfo], limit: int) -> None:
    if len(infos) > limit:
        raise FormatError(f"archive has {len(infos)} members; at most {limit} are accepted")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise FormatError("archive contains duplicate member names")
    for info in infos:
        if info.flag_bits & 0x1:
            raise FormatError(f"zip member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FormatError(f"zip member {info.filename!r} uses an unsupported compression method")


def _npz_member(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> _Member:
    with zf.open(info) as f:
        shape, fortran, dtype = _read_npy_header(f, key)
        header_len = f.tell()
    declared = header_len + math.prod(shape) * dtype.itemsize
    if info.file_size != declared:
        raise FormatError(
            f"zip member {info.filename!r} declares {info.file_size} bytes uncompressed but its .npy header "
            f"describes {declared} bytes; the archive is inconsistent"
        )
    order = "F" if fortran else "C"
    if info.compress_type == zipfile.ZIP_STORED:
        offset = _zip_data_offset(path, info) + header_len
        return _Member(shape, dtype, lambda: _memmap(path, dtype, offset, shape, order))

    def load() -> np.ndarray:
        with zf.open(info) as f:
            return np.load(f, allow_pickle=False)

    def chunks(rows: int) -> Iterator[np.ndarray]:
        with zf.open(info) as f:
            f.seek(header_len)
            row_bytes = shape[1] * dtype.itemsize
            for start in range(0, shape[0], rows):
                k = min(rows, shape[0] - start)
                buf = f.read(k * row_bytes)
                _check_truncated(k * row_bytes, len(buf))
                yield np.frombuffer(buf, dtype=dtype).reshape(k, shape[1])

    streamable = len(shape) == 2 and not fortran
    return _Member(shape, dtype, load, chunks=chunks if streamable else None)


def _open_npz(
    path, stack: ExitStack, zip_limits: ZipLimits | None = None
) -> tuple[dict[str, _Member], tuple[str, ...]]:
    """A zip of .npy members (numpy.savez / savez_compressed); stored members are memory-mapped."""
    zf = stack.enter_context(zipfile.ZipFile(path))
    infos = zf.infolist()
    _check_zip_names(infos, MAX_ZIP_MEMBERS)
    check_npz_directory(infos, zip_limits or ZipLimits.from_settings())
    members, extra = {}, []
    for info in infos:
        name = info.filename
        if "/" in name or "\\" in name or name.startswith(".."):
            raise FormatError(f"archive member {name!r} has a nested path; .npz members must be top-level")
        key = name.removesuffix(".npy")
        if key in KNOWN_KEYS and name.endswith(".npy"):
            members[key] = _npz_member(path, zf, info, key)
        else:
            extra.append(key)
    return members, tuple(extra)


# ---------------------------------------------------------------- .safetensors (safetensors spec)

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def _st_entry(name: str, entry: Any) -> tuple[np.dtype, bool, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise FormatError(f"safetensors entry {name!r} must have dtype, shape and data_offsets")
    if entry["dtype"] not in _ST_DTYPES:
        raise FormatError(f"tensor {name!r} has unsupported safetensors dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
        raise FormatError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise FormatError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
    begin, end = offsets
    if begin < 0 or end - begin != math.prod(shape) * dtype.itemsize:
        raise FormatError(
            f"tensor {name!r} data_offsets span {end - begin} bytes but shape {tuple(shape)} of "
            f"{entry['dtype']} needs {math.prod(shape) * dtype.itemsize}"
        )
    return dtype, entry["dtype"] == "BF16", tuple(shape), begin, end


def _open_safetensors(path, stack: ExitStack) -> tuple[dict[str, _Member], tuple[str, ...]]:
    """safetensors spec: u64 LE header length, JSON header {name: {dtype, shape, data_offsets}}, then
    one byte buffer that the tensors tile exactly (contiguous, no overlap, no trailing bytes)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len >= MAX_SAFETENSORS_HEADER:
            raise FormatError(f"safetensors header length {header_len} is not sane (limit 100 MB)")
        _check_truncated(8 + header_len, size)
        header = json.loads(f.read(header_len).decode("utf-8"))
    if not isinstance(header, dict):
        raise FormatError("safetensors header must be a JSON object")
    header.pop("__metadata__", None)
    entries = {name: _st_entry(name, e) for name, e in header.items()}
    data_start, data_len = 8 + header_len, size - 8 - header_len
    spans = sorted((e[3], e[4], name) for name, e in entries.items())
    _check_truncated(max((end for _, end, _ in spans), default=0), data_len)
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            raise FormatError(f"tensor {name!r} data_offsets are not contiguous (overlap or gap at {begin})")
        expected = end
    if expected != data_len:
        raise FormatError(f"file has {data_len - expected} unexpected bytes after the last tensor")
    members = {
        name: _Member(shape, dtype, partial(_memmap, path, dtype, data_start + begin, shape), bf16=bf16)
        for name, (dtype, bf16, shape, begin, _) in entries.items()
        if name in KNOWN_KEYS
    }
    return members, tuple(name for name in entries if name not in KNOWN_KEYS)


# ---------------------------------------------------------------- .pt (torch zip serialization)

_TORCH_STORAGES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}  # fmt: skip


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a torch.*Storage class in the pickle: only tells the element dtype."""

    dtype: np.dtype
    bf16: bool = False


@dataclass(frozen=True)
class _Tensor:
    array: np.ndarray  # view (possibly strided) of the storage, in stored dtype
    bf16: bool


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _Tensor:
    """Replacement for torch._utils._rebuild_tensor(_v2): a bounds-checked strided view of the storage."""
    if not isinstance(storage, _Tensor) or storage.array.ndim != 1:
        raise FormatError("tensor in .pt file does not reference a storage")
    ints = [storage_offset, *size, *stride]
    if len(size) != len(stride) or not all(type(v) is int and v >= 0 for v in ints):
        raise FormatError("tensor in .pt file has an invalid size, stride or offset")
    base, size, numel = storage.array, tuple(size), math.prod(size)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset > len(base) or (numel > 0 and last >= len(base)):
        raise FormatError("tensor in .pt file reaches beyond the end of its storage")
    if numel > len(base):  # only overlapping views (expand) do this; refusing keeps N*D <= file size
        raise FormatError("tensor in .pt file has more elements than its storage; save tensor.contiguous()")
    if numel == 0:
        return _Tensor(np.empty(size, dtype=base.dtype), storage.bf16)
    if tuple(stride) == tuple(math.prod(size[i + 1 :]) for i in range(len(size))):
        view = base[storage_offset : storage_offset + numel].reshape(size)  # stays a memmap
    else:
        strides = tuple(s * base.dtype.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(base[storage_offset:], size, strides, writeable=False)
    return _Tensor(view, storage.bf16)


class _WeightsOnlyUnpickler(pickle.Unpickler):
    """Unpickler for torch's data.pkl that resolves only a whitelist of globals."""

    def __init__(self, file, path, zf: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._path, self._zf, self._prefix, self._storages = path, zf, prefix, {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(np.dtype(_TORCH_STORAGES[name]), bf16=name == "BFloat16Storage")
        if module == "torch.storage" and name == "UntypedStorage":
            return _StorageType(np.dtype("u1"))
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise FormatError(
            f"pickle in .pt file references forbidden global '{module}.{name}': "
            "only weights-only tensor files are accepted"
        )

    def persistent_load(self, pid) -> _Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError("pickle in .pt file has an unsupported persistent id")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise FormatError("pickle in .pt file has a malformed storage reference")
        if key not in self._storages:
            self._storages[key] = _Tensor(self._read_storage(stype.dtype, key, numel), stype.bf16)
        return self._storages[key]

    def _read_storage(self, dtype: np.dtype, key: str, numel: int) -> np.ndarray:
        if not key.isalnum():
            raise FormatError(f"storage key {key!r} in .pt file is not a plain name")
        try:
            info = self._zf.getinfo(f"{self._prefix}data/{key}")
        except KeyError:
            raise FormatError(f".pt file references storage {key!r} that the archive lacks") from None
        if info.file_size != numel * dtype.itemsize:
            raise FormatError(
                f"storage {key!r} holds {info.file_size} bytes, expected {numel * dtype.itemsize}"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(f"storage {key!r} in .pt file is compressed; torch.save never does that")
        return _memmap(self._path, dtype, _zip_data_offset(self._path, info), (numel,))


def _open_pt(path, stack: ExitStack) -> tuple[dict[str, _Member], tuple[str, ...]]:
    """torch zip serialization: <name>/data.pkl (pickle, persistent ids for storages) + <name>/data/<key>
    raw little-endian storages. Unpickled with a whitelist, so no code from the file ever runs."""
    with zipfile.ZipFile(path) as zf:
        _check_zip_names(zf.infolist(), MAX_PT_MEMBERS)
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise FormatError(".pt archive must contain exactly one <name>/data.pkl")
        prefix = pkls[0].removesuffix("data.pkl")
        if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder") != b"little":
            raise FormatError("big-endian .pt files are not supported")
        info = zf.getinfo(pkls[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise FormatError(f"data.pkl is {info.file_size} bytes; at most {MAX_PICKLE_BYTES} are accepted")
        with zf.open(info) as f:
            obj = _WeightsOnlyUnpickler(f, path, zf, prefix).load()
    if isinstance(obj, _Tensor):
        obj = {"embeddings": obj}
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise FormatError(".pt file must hold a tensor or a dict of tensors keyed by name")
    members = {}
    for key in KNOWN_KEYS:
        if key in obj:
            t = obj[key]
            if not isinstance(t, _Tensor):
                raise FormatError(f"'{key}' in .pt file is not a tensor")
            members[key] = _Member(t.array.shape, t.array.dtype, lambda a=t.array: a, bf16=t.bf16)
    return members, tuple(k for k in obj if k not in KNOWN_KEYS)


# ---------------------------------------------------------------- validation

_OPENERS = {"npy": _open_npy, "npz": _open_npz, "safetensors": _open_safetensors, "pt": _open_pt}
_PASS_THROUGH = (FormatError, MemoryError, FileNotFoundError, PermissionError, IsADirectoryError)


@contextmanager
def _opened(
    fmt: str, path, zip_limits: ZipLimits | None = None
) -> Iterator[tuple[dict[str, _Member], tuple[str, ...]]]:
    """Open a file of a detected format; any low-level error from a malformed file becomes a FormatError."""
    try:
        with ExitStack() as stack:
            if fmt == "npz":
                yield _open_npz(path, stack, zip_limits)
            else:
                yield _OPENERS[fmt](path, stack)
    except _PASS_THROUGH:
        raise
    # parsers of hostile bytes raise nearly anything: BadZipFile, TokenError, struct.error, ...
    except Exception as e:
        raise FormatError(f"invalid .{fmt} file: {type(e).__name__}: {e}") from e


def _check_shapes(members: dict[str, _Member], max_elements: int | None) -> None:
    """Header-only checks: shapes, dtypes, lengths and the element limit."""
    emb = members.get("embeddings")
    if emb is None:
        raise FormatError("file has no 'embeddings' array")
    if len(emb.shape) != 2:
        raise FormatError(f"embeddings must be a 2-D array (N x D); got shape {emb.shape}")
    n, d = emb.shape
    if n < 1 or d < 1:
        raise FormatError(f"embeddings must have at least one row and one column; got shape {emb.shape}")
    if emb.dtype.kind != "f" and not emb.bf16:
        raise FormatError(f"embeddings dtype {emb.dtype_name} is not floating point")
    if max_elements is not None and n * d > max_elements:
        raise FormatError(
            f"embeddings have {n} x {d} = {n * d} elements, more than the limit of {max_elements}"
        )
    views = members.get("views")
    if views is not None:
        if len(views.shape) != 3 or views.shape[0] != n or views.shape[2] != d or views.shape[1] < 2:
            raise FormatError(f"views must be N x q x D = {n} x q x {d} with q >= 2; got shape {views.shape}")
        if views.dtype.kind != "f" and not views.bf16:
            raise FormatError(f"views dtype {views.dtype_name} is not floating point")
        if max_elements is not None and math.prod(views.shape) > max_elements:
            raise FormatError(f"views have {math.prod(views.shape)} elements, more than the limit of {max_elements}")
    for key, kinds in (("labels", "iu"), ("split", "iub"), ("poison", "iub")):
        m = members.get(key)
        if m is None:
            continue
        if len(m.shape) != 1:
            raise FormatError(f"{key} must be a 1-D array; got shape {m.shape}")
        if m.dtype.kind not in kinds or m.bf16:
            raise FormatError(f"{key} dtype {m.dtype_name} is not an integer type")
        if m.shape[0] != n:
            raise FormatError(f"{key} has {m.shape[0]} entries but embeddings has {n} rows")


def _small_arrays(members: dict[str, _Member]) -> dict[str, np.ndarray | None]:
    """Read labels (int64) and split / poison (int8, values in {0, 1})."""
    out: dict[str, np.ndarray | None] = dict.fromkeys(("labels", "split", "poison"))
    if "labels" in members:
        raw = np.asarray(members["labels"].load())
        if raw.dtype == np.uint64 and raw.size and raw.max() > np.iinfo(np.int64).max:
            raise FormatError("labels contain values too large for int64")
        out["labels"] = raw.astype(np.int64)
    for key in ("split", "poison"):
        if key in members:
            raw = np.asarray(members[key].load())
            bad = raw[(raw != 0) & (raw != 1)]
            if bad.size:
                what = "0 (train) and 1 (test)" if key == "split" else "0 and 1"
                raise FormatError(
                    f"{key} must contain only {what}; found value {bad[0]} ({bad.size} entries)"
                )
            out[key] = raw.astype(np.int8)
    return out


def _check_finite(chunks: Iterator[np.ndarray], bf16: bool, what: str = "embeddings") -> None:
    bad = 0
    for chunk in chunks:
        chunk = _bf16_to_f32(chunk) if bf16 else np.asarray(chunk)
        bad += chunk.size - int(np.count_nonzero(np.isfinite(chunk)))
    if bad:
        raise FormatError(f"{what} contain {bad} non-finite values (NaN or Inf)")


def _chunk_rows(chunk_rows: int, d: int) -> int:
    return max(1, min(chunk_rows, _CHUNK_ELEMENTS // d))


@contextmanager
def _validated(path, filename, max_elements: int | None, zip_limits: ZipLimits | None = None):
    """Detect, open and check headers and the small arrays; yields (format, members, extra keys, small arrays)."""
    fmt = detect_format(path, filename)
    with _opened(fmt, path, zip_limits) as (members, extra):
        _check_shapes(members, max_elements)
        yield fmt, members, extra, _small_arrays(members)


def labels_digest(labels: np.ndarray | None) -> str | None:
    """sha256 of the labels as a little-endian int64 array (the same for any integer dtype); None without labels."""
    if labels is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def inspect_embeddings(
    path, filename: str | None = None, *, max_elements: int | None = None, chunk_rows: int = 65536,
    zip_limits: ZipLimits | None = None,
) -> EmbeddingsInfo:
    """Validate a whole file in bounded memory and describe it; raise FormatError naming any problem.

    Checks: readable format; embeddings 2-D, N >= 1, D >= 1, floating dtype, every value finite (scanned
    in row chunks of a memmap or decompression stream) and N * D <= max_elements; labels 1-D integer
    dtype of length N; split / poison 1-D of length N with values in {0, 1}; an .npz within `zip_limits`
    (default: ZipLimits.from_settings()) before anything is inflated.
    """
    with _validated(path, filename, max_elements, zip_limits) as (fmt, members, extra, small):
        emb, labels = members["embeddings"], small["labels"]
        n, d = emb.shape
        _check_finite(emb.row_chunks(_chunk_rows(chunk_rows, d)), emb.bf16)
        views = members.get("views")
        if views is not None:
            _check_finite(views.row_chunks(_chunk_rows(chunk_rows, d * views.shape[1])), views.bf16, "views")
        return EmbeddingsInfo(
            format=fmt, n=n, d=d, dtype=emb.dtype_name, has_labels=labels is not None,
            has_split=small["split"] is not None, has_poison=small["poison"] is not None,
            n_classes=None if labels is None else int(np.unique(labels).size), extra_keys=extra,
            n_views=0 if views is None else int(views.shape[1]), labels_sha256=labels_digest(labels),
        )  # fmt: skip


def load_embeddings(
    path, filename: str | None = None, *, check_finite: bool = True, zip_limits: ZipLimits | None = None
) -> EmbeddingsArrays:
    """Validate and load a file. Embeddings stay memory-mapped where the format allows; bfloat16 becomes
    float32 and strided .pt views are copied row-major. Same checks as inspect_embeddings, less max_elements
    (the zip limits run here too: the worker refuses a bomb even if it got past the API)."""
    with _validated(path, filename, None, zip_limits) as (_, members, _, small):
        emb = members["embeddings"]
        arr = _bf16_to_f32(emb.load()) if emb.bf16 else emb.load()
        if not arr.flags.c_contiguous and not isinstance(arr, np.memmap):
            arr = np.ascontiguousarray(arr)
        if check_finite:
            rows = _chunk_rows(65536, arr.shape[1])
            _check_finite((arr[i : i + rows] for i in range(0, len(arr), rows)), False)
        views = members.get("views")
        varr = None
        if views is not None:
            varr = _bf16_to_f32(views.load()) if views.bf16 else np.ascontiguousarray(views.load())
            if check_finite:
                _check_finite(iter([varr]), False, "views")
        return EmbeddingsArrays(arr, small["labels"], small["split"], small["poison"], varr)
