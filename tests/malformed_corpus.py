"""A corpus of malformed uploads: every file here must be refused with a 4xx that names the problem.

Pure functions, no I/O, no torch: each corpus is a list of `Malformed(name, filename, content, family, words)`
where `family` is the expected status family (4: a 4xx) and `words` a lower-case phrase the JSON `detail`
must contain. Three corpora, one per upload endpoint: `embeddings_corpus()` (POST /runs/{id}/artifacts),
`checkpoint_corpus()` (the same with kind=checkpoint) and `dataset_corpus()` (POST /datasets).

The bombs are sized against `SERVER_LIMITS` (the deployment's REPSCOPE_* limits): they cross them while the
uploads stay small, because the deflate streams are built from one repeated block.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npformat

# limits of the deployment the corpus is uploaded to (environment of the API process)
MAX_ELEMENTS = 10_000_000
MAX_ZIP_MEMBERS = 1_000
MAX_ZIP_EXPANDED_BYTES = 50_000_000
SERVER_LIMITS = {
    "REPSCOPE_MAX_ELEMENTS": str(MAX_ELEMENTS),
    "REPSCOPE_MAX_ZIP_MEMBERS": str(MAX_ZIP_MEMBERS),
    "REPSCOPE_MAX_ZIP_EXPANDED_BYTES": str(MAX_ZIP_EXPANDED_BYTES),
    "REPSCOPE_MAX_UPLOAD_BYTES": str(32 * 1024**2),
}
DEFAULT_MARKER = "/tmp/repscope-corpus-pwned"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(56)


class Malformed(NamedTuple):
    name: str
    filename: str
    content: bytes
    family: int  # expected status family: 4 -> 4xx
    words: str  # lower-case phrase the response's detail must contain


# ---------------------------------------------------------------- builders


def npy(arr: np.ndarray) -> bytes:
    """`np.save` bytes (object arrays pickled, as numpy writes them)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f4", version: tuple[int, int] = (1, 0)) -> bytes:
    """Just an .npy header (NEP 1) declaring `shape` of `descr`; the caller decides what data follows."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        npformat.write_array_header_1_0(buf, header)
    else:
        npformat.write_array_header_2_0(buf, header)
    return buf.getvalue()


def safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    """u64 LE header length, JSON header, data; `header_len` overrides the length field (to lie)."""
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


class RawMember(NamedTuple):
    """A zip member written byte for byte: `data` as stored, with whatever sizes, CRC and flags it claims."""

    name: str
    data: bytes
    method: int
    crc: int
    size: int  # declared uncompressed size
    flags: int = 0


def raw_zip(members: list[RawMember]) -> bytes:
    """A zip archive (no zip64) from members whose headers may lie: what zipfile refuses to write."""
    out, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, m.flags, m.method, 0, 0x21, m.crc, len(m.data),
                           m.size, len(name), 0) + name + m.data
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, m.flags, m.method, 0, 0x21, m.crc,
                               len(m.data), m.size, len(name), 0, 0, 0, 0, 0, offset) + name
    start = len(out)
    out += central + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                                 start, 0)
    return bytes(out)


def zip_version(content: bytes, version: int = 99) -> bytes:
    """`content` (a zip) with every central-directory entry claiming it needs zip `version` to extract."""
    out = bytearray(content)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 6:at + 8] = struct.pack("<H", version)
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def deflate_bomb(prefix: bytes, n_zeros: int, block: int = 1 << 20) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, size) of `prefix` + `n_zeros` zero bytes, built from one compressed block
    of zeros repeated (a full flush resets the compressor, so every block compresses to the same bytes)."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = zeros.compress(bytes(block)) + zeros.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(n_zeros, block)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream += one * count + tail.compress(bytes(rest)) + tail.flush()
    crc, zero_block = zlib.crc32(prefix), bytes(block)
    for _ in range(count):
        crc = zlib.crc32(zero_block, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return stream, crc, len(prefix) + n_zeros


def bomb_member(name: str, prefix: bytes, n_zeros: int) -> RawMember:
    stream, crc, size = deflate_bomb(prefix, n_zeros)
    return RawMember(name, stream, zipfile.ZIP_DEFLATED, crc, size)


def short_stream(name: str, data: bytes, size: int) -> RawMember:
    """A deflated member that declares `size` bytes (and the CRC of `data`) but whose stream ends after `data`."""
    return RawMember(name, zlib.compress(data, 9, -15), zipfile.ZIP_DEFLATED, zlib.crc32(data), size)


def stored(name: str, data: bytes, **kw: int) -> RawMember:
    return RawMember(name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data), **kw)


def torch_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None, root: str = "archive",
              extra: dict[str, bytes] | None = None) -> bytes:
    """The layout `torch.save` writes: <root>/data.pkl, byteorder, version, data/<key> storages."""
    members = {f"{root}/data.pkl": data_pkl, f"{root}/byteorder": b"little", f"{root}/version": b"3\n"}
    members.update({f"{root}/data/{k}": v for k, v in (storages or {}).items()})
    members.update(extra or {})
    return zip_of(members)


def tensor_ops(shape: tuple[int, ...], numel: int, key: str = "0") -> bytes:
    """Pickle opcodes (protocol 0/1) that rebuild one float32 tensor from storage `key`, as torch writes them."""

    def tup(values: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"I%d\n" % v for v in values) + b"t"

    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + b"(Vstorage\nctorch\nFloatStorage\nV%s\nVcpu\nI%d\ntQ"
            % (key.encode(), numel) + b"I0\n" + tup(shape) + tup(strides)
            + b"I00\nccollections\nOrderedDict\n)RtR")


def pt_embeddings(arr: np.ndarray) -> bytes:
    """A weights-only `.pt` holding {"embeddings": float32 tensor}, written without torch."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    pkl = b"}(Vembeddings\n" + tensor_ops(arr.shape, arr.size) + b"u."
    return torch_zip(pkl, {"0": arr.tobytes()})


def legacy_torch() -> bytes:
    """The pre-1.6 (non-zip) torch.save stream: magic number, protocol, system info, then the object."""
    parts = (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True},
             {"embeddings": [[1.0, 2.0]]})
    return b"".join(pickle.dumps(p, protocol=2) for p in parts)


def evil_pickles(marker: str) -> dict[str, bytes]:
    """Hand-written pickles that would run code under a plain unpickler (they name globals and call them)."""
    m = marker.encode()
    return {
        "os.system": b"cos\nsystem\n(Vtouch %s\ntR." % m,
        "builtins.eval": b"cbuiltins\neval\n(V__import__('os').system('touch %s')\ntR." % m,
        "custom class": b"\x80\x02ctests.malformed_corpus\nExploit\n)\x81}Vpath\nV%s\nsb." % m,
        "subprocess in a dict": b"}(Vembeddings\ncsubprocess\ncheck_call\n((Vtouch\nV%s\nltRu." % m,
    }


class Exploit:
    """What the 'custom class' pickle names: unpickling it for real would create the marker file."""

    def __setstate__(self, state: dict) -> None:
        open(state["path"], "w").close()  # noqa: SIM115


def nested_lists_pickle(depth: int, key: str = "model") -> bytes:
    """{key: [[[ ... ]]]} nested `depth` deep: tiny, and a recursive walk of it overflows the stack."""
    return b"}(V%s\n" % key.encode() + b"(" * depth + b"l" * depth + b"u."


def laughs_pickle(levels: int = 40, fanout: int = 10) -> bytes:
    """A 'billion laughs' pickle: level i is a list of `fanout` references to level i-1, so a few hundred
    bytes describe fanout**levels paths for anything that walks the tree without remembering what it saw."""
    out = bytearray(b"\x80\x02}(Vstate_dict\n]q\x000")  # level 0: an empty list, memoized, popped
    for i in range(1, levels + 1):
        out += b"](" + b"h%c" % (i - 1) * fanout + b"eq%c0" % i
    return bytes(out) + b"h%cu." % levels


def cyclic_pickle() -> bytes:
    """{"state_dict": L} where L contains itself."""
    return b"\x80\x02}(Vstate_dict\n]q\x00h\x00au."


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def image_zip(members: dict[str, bytes]) -> bytes:
    return zip_of(members, zipfile.ZIP_DEFLATED)


# ---------------------------------------------------------------- corpora

GOOD = np.random.default_rng(7).standard_normal((32, 8)).astype(np.float32)
E4 = 4  # status family


def _bad(name: str, filename: str, content: bytes, words: str) -> Malformed:
    return Malformed(name, filename, content, E4, words.lower())


def _garbage_cases(ext: str, words: str) -> list[Malformed]:
    return [
        _bad("empty file", f"empty{ext}", b"", words),
        _bad("random bytes", f"random{ext}", random_bytes(4096, seed=1), words),
        _bad("text with a valid extension", f"notes{ext}", b"step,loss\n1,0.5\n2,0.4\n", words),
        _bad("wrong extension (JSON)", "embeddings.json", json.dumps({"embeddings": [[1.0, 2.0]]}).encode(), words),
        _bad("PNG image", f"picture{ext}", PNG, words),
    ]


def _dtype_cases() -> list[Malformed]:
    g = GOOD
    return [
        _bad("int32 embeddings", "z.npy", npy(np.arange(32, dtype=np.int32).reshape(8, 4)), "not floating point"),
        _bad("complex embeddings", "z.npy", npy(g[:, :4] + 1j * g[:, 4:]), "not floating point"),
        _bad("object embeddings", "z.npy", npy(np.array([[1.0, None], [2.0, "x"]], dtype=object)), "object"),
        _bad("string embeddings", "z.npy", npy(np.array([["1.0", "2.0"], ["3.0", "4.0"]])), "not floating point"),
        _bad("bool embeddings", "z.npy", npy(g > 0), "not floating point"),
        _bad("structured embeddings", "z.npy", npy(np.zeros((4, 2), dtype=[("a", "<f4"), ("b", "<f4")])),
             "structured"),
        _bad("int8 safetensors", "z.safetensors", safetensors(
            {"embeddings": {"dtype": "I8", "shape": [4, 2], "data_offsets": [0, 8]}}, bytes(8)), "not floating point"),
        _bad("unknown safetensors dtype", "z.safetensors", safetensors(
            {"embeddings": {"dtype": "C64", "shape": [1, 1], "data_offsets": [0, 8]}}, bytes(8)), "dtype"),
        _bad("float labels", "z.npz", npz(embeddings=GOOD, labels=np.linspace(0, 1, 32)), "labels dtype"),
        _bad("labels count mismatch", "z.npz", npz(embeddings=GOOD, labels=np.arange(31)), "31 entries"),
        _bad("split outside 0/1", "z.npz", npz(embeddings=GOOD, split=np.full(32, 7)), "split must contain"),
    ]


def _value_cases() -> list[Malformed]:
    nan, inf = GOOD.copy(), GOOD.astype(np.float64)
    nan[3, 5] = np.nan
    inf[0, 0] = -np.inf
    half = GOOD.astype(np.float16)
    half[-1, -1] = np.inf
    return [
        _bad("NaN in compressed npz", "z.npz", npz(True, embeddings=nan), "non-finite"),
        _bad("-Inf in float64 safetensors", "z.safetensors", safetensors(
            {"embeddings": {"dtype": "F64", "shape": [32, 8], "data_offsets": [0, 2048]}}, inf.tobytes()), "non-finite"),
        _bad("Inf in float16 npy", "z.npy", npy(half), "non-finite"),
        _bad("NaN in .pt", "z.pt", pt_embeddings(nan), "non-finite"),
    ]


def _shape_cases() -> list[Malformed]:
    return [
        _bad("1-D npz embeddings", "z.npz", npz(embeddings=GOOD[0]), "2-d"),
        _bad("3-D embeddings", "z.npy", npy(GOOD.reshape(4, 8, 8)), "2-d"),
        _bad("0-D embeddings", "z.npy", npy(np.float32(1.0)), "2-d"),
        _bad("zero rows", "z.npy", npy(np.zeros((0, 8), np.float32)), "at least one row"),
        _bad("3-D .pt", "z.pt", pt_embeddings(GOOD.reshape(2, 16, 8)), "2-d"),
        _bad("no embeddings array", "z.npz", npz(vectors=GOOD), "no 'embeddings'"),
    ]


def _truncated_cases() -> list[Malformed]:
    st = safetensors({"embeddings": {"dtype": "F32", "shape": [32, 8], "data_offsets": [0, 1024]}}, GOOD.tobytes())
    z, c = npz(embeddings=GOOD), npz(True, embeddings=GOOD)
    return [
        _bad("npy cut in its header", "z.npy", npy(GOOD)[:40], "invalid .npy"),
        _bad("npz cut in half", "z.npz", z[: len(z) // 2], "corrupt or truncated"),
        _bad("compressed npz without its central directory", "z.npz", c[:-60], "corrupt or truncated"),
        _bad("safetensors cut in its header", "z.safetensors", st[:40], "truncated"),
        _bad("safetensors cut in its data", "z.safetensors", st[:-100], "truncated"),
        _bad(".pt cut in half", "z.pt", pt_embeddings(GOOD)[:300], "corrupt or truncated"),
    ]


def _lying_header_cases() -> list[Malformed]:
    huge = (10**6, 10**6)  # 4 TB of float32
    long_header = b"\x93NUMPY\x01\x00" + struct.pack("<H", 60_000) + b"{" + b" " * 59_998 + b"\n"
    deep_json = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        _bad("npy header claiming terabytes", "z.npy", npy_header(huge) + bytes(64), "truncated"),
        _bad("npy v2 header claiming terabytes", "z.npy", npy_header(huge, version=(2, 0)) + bytes(64), "truncated"),
        _bad("npy header over the size limit", "z.npy", long_header + bytes(64), "header"),
        _bad("npy negative shape", "z.npy", npy_header((-8, 4)) + bytes(128), "at least one row"),
        _bad("safetensors header length 2^60", "z.safetensors", safetensors({}, b"", header_len=2**60),
             "unknown file format"),
        _bad("safetensors header over the limit", "z.safetensors",
             safetensors({}, b"", header_len=100_000_001) + b" " * 64, "unknown file format"),
        _bad("safetensors header longer than the file", "z.safetensors",
             safetensors({"embeddings": {}}, b"", header_len=50_000_000), "truncated"),
        _bad("safetensors tensor of terabytes", "z.safetensors", safetensors(
            {"embeddings": {"dtype": "F32", "shape": list(huge), "data_offsets": [0, 4 * 10**12]}}, bytes(64)),
            "truncated"),
        _bad("safetensors overlapping tensors", "z.safetensors", safetensors(
            {"embeddings": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
             "labels": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16)), "contiguous"),
        _bad("safetensors deeply nested JSON header", "z.safetensors",
             struct.pack("<Q", len(deep_json)) + deep_json, "invalid .safetensors"),
        _bad("npz member claiming terabytes", "z.npz",
             raw_zip([stored("embeddings.npy", npy_header(huge) + bytes(64))]), "inconsistent"),
        _bad("npz member bigger than its header says", "z.npz",
             raw_zip([bomb_member("embeddings.npy", npy_header((4, 4)), 4 * 10**6)]), "inconsistent"),
    ]


def _zip_cases() -> list[Malformed]:
    rows = 2 * MAX_ELEMENTS // 64  # a 2 x MAX_ELEMENTS float32 bomb: 80 MB of zeros in ~80 KB
    bomb = bomb_member("embeddings.npy", npy_header((rows, 64)), rows * 64 * 4)
    inner = npz(embeddings=GOOD)
    return [
        _bad("npz bomb past the element limit", "z.npz", raw_zip([bomb]), "more than the limit"),
        _bad("npz with many members", "z.npz", zip_of({f"m{i}.npy": npy(GOOD[:1]) for i in range(40)}), "at most"),
        _bad("npz nested in npz", "z.npz", zip_of({"embeddings.npy": inner}), "invalid .npz"),
        _bad("npz with a nested member path", "z.npz", zip_of({"inner/embeddings.npy": npy(GOOD)}), "nested path"),
        _bad("npz member climbing out", "z.npz", zip_of({"../../etc/passwd": b"root:x:0:0\n"}), "nested path"),
        _bad("npz with duplicate members", "z.npz",
             raw_zip([stored("embeddings.npy", npy(GOOD)), stored("embeddings.npy", npy(GOOD))]), "duplicate"),
        _bad("npz with an encrypted member", "z.npz", raw_zip([stored("embeddings.npy", npy(GOOD), flags=1)]),
             "encrypted"),
        _bad("npz needing zip version 9.9", "z.npz", zip_version(npz(embeddings=GOOD)), "zip file version"),
        _bad("npz with an unknown compression method", "z.npz",
             raw_zip([RawMember("embeddings.npy", npy(GOOD), 99, 0, len(npy(GOOD)))]), "compression"),
    ]


def _pickle_cases(marker: str) -> list[Malformed]:
    cases = [_bad(f"pickle calling {what}", "z.pt", torch_zip(pkl), "forbidden global")
             for what, pkl in evil_pickles(marker).items()]
    return cases + [
        _bad("legacy non-zip torch file", "z.pt", legacy_torch(), "legacy"),
        _bad("bare pickle", "z.pt", pickle.dumps({"embeddings": [[1.0]]}, protocol=4), "legacy"),
        _bad(".pt storage missing from the archive", "z.pt",
             torch_zip(b"}(Vembeddings\n" + tensor_ops((4, 2), 8, key="7") + b"u."), "lacks"),
        _bad(".pt storage key climbing out", "z.pt",
             torch_zip(b"}(Vembeddings\n" + tensor_ops((4, 2), 8, key="../../x") + b"u."), "not a plain name"),
        _bad(".pt with nested lists", "z.pt", torch_zip(nested_lists_pickle(5000, "embeddings")), "not a tensor"),
    ]


def embeddings_corpus(marker: str = DEFAULT_MARKER) -> list[Malformed]:
    """Files uploaded as embeddings (POST /api/v1/runs/{id}/artifacts)."""
    return [*_garbage_cases(".npy", "unknown file format"), *_dtype_cases(), *_value_cases(), *_shape_cases(),
            *_truncated_cases(), *_lying_header_cases(), *_zip_cases(), *_pickle_cases(marker)]


def checkpoint_corpus(marker: str = DEFAULT_MARKER) -> list[Malformed]:
    """Files uploaded as checkpoints (kind=checkpoint, arch given)."""
    st = safetensors({"w": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}}, bytes(32))
    weights = torch_zip(b"}(Vw\n" + tensor_ops((4, 2), 8) + b"u.", {"0": bytes(32)})
    evil = [_bad(f"state_dict pickle calling {what}", "model.pt", torch_zip(pkl), "forbidden global")
            for what, pkl in evil_pickles(marker).items()]
    return [
        *_garbage_cases(".pt", "unknown checkpoint format"),
        *evil,
        _bad("legacy non-zip torch checkpoint", "model.pt", legacy_torch(), "legacy"),
        _bad("checkpoint zip cut in half", "model.pt", weights[: len(weights) // 2], "not a valid zip"),
        _bad("state_dict without tensors", "model.pt", torch_zip(b"}(Vlr\nF0.1\nVepoch\nI3\nu."), "no tensors"),
        _bad("state_dict nested 5000 deep", "model.pt", torch_zip(nested_lists_pickle(5000)), "no tensors"),
        _bad("state_dict billion laughs", "model.pt", torch_zip(laughs_pickle()), "no tensors"),
        _bad("state_dict containing itself", "model.pt", torch_zip(cyclic_pickle()), "no tensors"),
        _bad("state_dict storage missing", "model.pt",
             torch_zip(b"}(Vw\n" + tensor_ops((4, 2), 8, key="9") + b"u."), "lacks"),
        _bad("garbage data.pkl", "model.pt", torch_zip(b"\x80\x02not a pickle at all"), "unreadable"),
        _bad("two top-level folders", "model.pt", torch_zip(b"}.", extra={"other/data.pkl": b"}."}),
             "single top-level"),
        _bad("member climbing out", "model.pt", torch_zip(b"}.", extra={"../../etc/passwd": b"root:x:0:0\n"}),
             "single top-level"),
        _bad("zip that is no checkpoint", "model.pt", npz(embeddings=GOOD), "neither"),
        _bad("checkpoint needing zip version 9.9", "model.pt", zip_version(weights), "zip file version"),
        _bad("encrypted checkpoint member", "model.pt",
             raw_zip([stored("archive/data.pkl", b"}.", flags=1), stored("archive/byteorder", b"little")]),
             "encrypted"),
        _bad("safetensors checkpoint truncated", "model.safetensors", st[:-8], "truncated"),
        _bad("safetensors header length 2^60", "model.safetensors", safetensors({}, b"", header_len=2**60),
             "unknown checkpoint format"),
        _bad("safetensors tensor of terabytes", "model.safetensors", safetensors(
            {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, bytes(8)),
            "truncated"),
        _bad("safetensors header not an object", "model.safetensors", safetensors([1, 2], b""),  # type: ignore[arg-type]
             "json object"),
    ]


def _dataset_npz_cases() -> list[Malformed]:
    images = np.random.default_rng(3).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    n_zeros = 2 * MAX_ZIP_EXPANDED_BYTES
    bomb = bomb_member("images.npy", npy_header((n_zeros // 3072, 32, 32, 3), "|u1"), n_zeros // 3072 * 3072)
    lying_labels = stored("labels.npy", npy_header((10**11,), "<i8") + bytes(64))
    labels_header = npy_header((10**6,), "<i8")  # 8 MB declared, consistently, in a stream of 130 bytes
    short_labels = short_stream("labels.npy", labels_header, len(labels_header) + 10**6 * 8)
    return [
        _bad("float images", "d.npz", npz(images=images.astype(np.float32), labels=labels), "uint8"),
        _bad("3-D images", "d.npz", npz(images=images[..., 0], labels=labels), "n x h x w x c"),
        _bad("object labels", "d.npz", npz(images=images, labels=np.array([1, None] * 6, dtype=object)), "object"),
        _bad("NaN labels", "d.npz", npz(images=images, labels=np.full(12, np.nan)), "integer"),
        _bad("negative labels", "d.npz", npz(images=images, labels=labels - 1), "non-negative"),
        _bad("labels count mismatch", "d.npz", npz(images=images, labels=labels[:7]), "length 12"),
        _bad("split outside 0/1", "d.npz", npz(images=images, labels=labels, split=np.full(12, 5)), "split"),
        _bad("no images", "d.npz", npz(images=images[:0], labels=labels[:0]), "between 1 and"),
        _bad("npz cut in half", "d.npz", npz(images=images, labels=labels)[:900], "neither"),
        _bad("labels header claiming terabytes", "d.npz",
             raw_zip([stored("images.npy", npy(images)), lying_labels]), "inconsistent"),
        _bad("labels header of megabytes, stream of bytes", "d.npz",
             raw_zip([stored("images.npy", npy(images)), short_labels]), "length 12"),
        _bad("images member that is not an array", "d.npz",
             raw_zip([stored("images.npy", random_bytes(256, seed=5)), stored("labels.npy", npy(labels))]),
             "invalid dataset .npz"),
        _bad("npz bomb past the expanded-size limit", "d.npz",
             raw_zip([bomb, stored("labels.npy", npy(np.zeros(n_zeros // 3072, np.int64)))]), "expands to"),
    ]


def _image_folder_cases() -> list[Malformed]:
    png_bomb = bomb_member("cat/a.png", PNG, 64 * 1024**2)
    corrupt = RawMember("cat/a.png", random_bytes(64, seed=9), zipfile.ZIP_DEFLATED, 0, 80)
    nested = image_zip({"cat/a.png": PNG, "cat/b.png": PNG})
    return [
        _bad("path traversal", "d.zip", image_zip({"cat/a.png": PNG, "../../etc/passwd": b"root:x:0:0\n"}),
             "climbs out"),
        _bad("absolute member path", "d.zip", image_zip({"/etc/passwd": b"root:x:0:0\n"}), "absolute"),
        _bad("windows member path", "d.zip", image_zip({"C:/Windows/a.png": PNG}), "windows"),
        _bad("zip bomb", "d.zip", raw_zip([png_bomb]), "expands"),
        _bad("many members", "d.zip", image_zip({f"cat/{i}.png": PNG for i in range(MAX_ZIP_MEMBERS + 1)}),
             "at most"),
        _bad("nested zip", "d.zip", image_zip({"cat/a.png": PNG, "cat/more.zip": nested}), "not an image"),
        _bad("text named .png", "d.zip", image_zip({"cat/a.png": b"#!/bin/sh\nrm -rf /\n"}), "not a png"),
        _bad("no images", "d.zip", image_zip({"readme.txt": b"hello"}), "not an image"),
        _bad("encrypted member", "d.zip", raw_zip([stored("cat/a.png", PNG, flags=1)]), "encrypted"),
        _bad("zip needing version 9.9", "d.zip", zip_version(image_zip({"cat/a.png": PNG})), "zip file version"),
        _bad("unknown compression method", "d.zip", raw_zip([RawMember("cat/a.png", PNG, 99, 0, len(PNG))]),
             "compression"),
        _bad("corrupt deflate stream", "d.zip", raw_zip([corrupt]), "corrupt"),
        _bad("corrupt bzip2 stream", "d.zip", raw_zip([corrupt._replace(method=zipfile.ZIP_BZIP2)]), "corrupt"),
    ]


def dataset_corpus() -> list[Malformed]:
    """Files uploaded as datasets (POST /api/v1/datasets)."""
    return [*_garbage_cases(".zip", "neither"), *_dataset_npz_cases(), *_image_folder_cases()]


# ---------------------------------------------------------------- mutants of valid files


def valid_files() -> dict[str, list[tuple[str, bytes]]]:
    """Well-formed files of each upload kind (embeddings, checkpoint, dataset): the seeds of `mutants`."""
    images = np.random.default_rng(3).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    st = {"embeddings": {"dtype": "F32", "shape": [32, 8], "data_offsets": [0, 1024]}}
    two_tensors = b"}(Vw\n" + tensor_ops((4, 2), 8) + b"Vb\n" + tensor_ops((8,), 8, key="1") + b"u."
    return {
        "embeddings": [("z.npy", npy(GOOD)), ("z.npz", npz(embeddings=GOOD, labels=np.arange(32) % 4)),
                       ("z.npz", npz(True, embeddings=GOOD, split=np.arange(32) % 2)),
                       ("z.safetensors", safetensors(st, GOOD.tobytes())), ("z.pt", pt_embeddings(GOOD))],
        "checkpoint": [("w.pt", torch_zip(two_tensors, {"0": bytes(32), "1": bytes(32)})),
                       ("w.safetensors", safetensors({"w": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}},
                                                     bytes(32)))],
        "dataset": [("d.npz", npz(images=images, labels=labels, split=labels % 2)),
                    ("d.npz", npz(True, images=images, labels=labels)),
                    ("d.zip", image_zip({"root/cat/a.png": PNG, "root/dog/b.png": PNG, "root/dog/c.png": PNG}))],
    }


def mutate(content: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a truncation, an inserted or deleted run, a 4- or 8-byte field set to an
    extreme (lengths, offsets and counts in headers are such fields)."""
    b = bytearray(content)
    kind = int(rng.integers(0, 6))
    at = int(rng.integers(0, max(1, len(b) - 8)))
    if kind == 0:
        for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
            b[i] = int(rng.integers(0, 256))
    elif kind == 1:
        del b[at:]
    elif kind == 2:
        b[at:at + 4] = (b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x00\x00\x00\x80")[at % 4]
    elif kind == 3:
        b[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 4:
        del b[at:at + int(rng.integers(1, 64))]
    else:
        b[at:at + 8] = int(rng.integers(0, 2**63)).to_bytes(8, "little")
    return bytes(b)


def mutants(content: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [mutate(content, rng) for _ in range(count)]
