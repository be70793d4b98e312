"""Tests for repscope.formats: exact value round-trips per format, and refusal of bad / hostile files."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as st_save_numpy
from safetensors.torch import save_file as st_save_torch

from repscope.formats import (
    FORMATS,
    EmbeddingsInfo,
    FormatError,
    detect_format,
    inspect_embeddings,
    load_embeddings,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


def _emb(n=50, d=8, dtype=np.float32):
    return RNG.standard_normal((n, d)).astype(dtype)


def _sidecars(n=50):
    labels = RNG.integers(0, 5, n).astype(np.int64)
    split = (np.arange(n) % 3 == 0).astype(np.int8)
    poison = (np.arange(n) % 7 == 0).astype(np.uint8)
    return labels, split, poison


def _refused(path, substring, **kwargs):
    with pytest.raises(FormatError) as err:
        inspect_embeddings(path, **kwargs)
    assert substring in str(err.value), str(err.value)
    return str(err.value)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_npy_round_trip(tmp_path, dtype):
    x = _emb(dtype=dtype)
    path = tmp_path / "e.npy"
    np.save(path, x)
    info = inspect_embeddings(path)
    assert (info.format, info.n, info.d, info.dtype) == ("npy", 50, 8, np.dtype(dtype).name)
    assert not (info.has_labels or info.has_split or info.has_poison) and info.n_classes is None
    arrays = load_embeddings(path)
    assert isinstance(arrays.embeddings, np.memmap)  # stays on disk
    assert arrays.embeddings.dtype == dtype
    np.testing.assert_array_equal(arrays.embeddings, x)
    assert arrays.labels is None and arrays.split is None and arrays.poison is None


def test_npy_fortran_order_and_small_chunks(tmp_path):
    x = np.asfortranarray(_emb(n=23, d=5))
    path = tmp_path / "f.npy"
    np.save(path, x)
    assert inspect_embeddings(path, chunk_rows=4).n == 23
    np.testing.assert_array_equal(load_embeddings(path).embeddings, x)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip(tmp_path, compressed):
    x = _emb()
    labels, split, poison = _sidecars()
    path = tmp_path / "e.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, embeddings=x, labels=labels, split=split, poison=poison, notes=np.arange(3))
    info = inspect_embeddings(path, chunk_rows=7)
    digest = hashlib.sha256(labels.astype("<i8").tobytes()).hexdigest()  # the same for any integer dtype
    assert info == EmbeddingsInfo(
        "npz", 50, 8, "float32", True, True, True, len(np.unique(labels)), ("notes",), labels_sha256=digest
    )
    assert json.loads(json.dumps(info.to_meta()))["extra_keys"] == ["notes"]
    arrays = load_embeddings(path)
    assert isinstance(arrays.embeddings, np.memmap) is not compressed
    np.testing.assert_array_equal(arrays.embeddings, x)
    np.testing.assert_array_equal(arrays.labels, labels)
    np.testing.assert_array_equal(arrays.split, split)
    np.testing.assert_array_equal(arrays.poison, poison)
    assert (arrays.labels.dtype, arrays.split.dtype, arrays.poison.dtype) == (np.int64, np.int8, np.int8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_safetensors_round_trip(tmp_path, dtype):
    x = _emb(dtype=dtype)
    labels, split, poison = _sidecars()
    path = tmp_path / "e.safetensors"
    st_save_numpy({"embeddings": x, "labels": labels, "split": split, "poison": poison}, str(path))
    info = inspect_embeddings(path)
    assert (info.format, info.n, info.d, info.dtype, info.n_classes) == (
        "safetensors", 50, 8, np.dtype(dtype).name, len(np.unique(labels)),
    )  # fmt: skip
    arrays = load_embeddings(path)
    assert isinstance(arrays.embeddings, np.memmap)
    np.testing.assert_array_equal(arrays.embeddings, x)
    np.testing.assert_array_equal(arrays.labels, labels)
    np.testing.assert_array_equal(arrays.split, split)
    np.testing.assert_array_equal(arrays.poison, poison)


def test_safetensors_bf16(tmp_path):
    t = torch.randn(40, 6).bfloat16()
    path = tmp_path / "e.safetensors"
    st_save_torch(
        {"embeddings": t, "labels": torch.arange(40) % 4, "split": torch.zeros(40, dtype=torch.bool)},
        str(path),
    )
    info = inspect_embeddings(path)
    assert (info.dtype, info.n_classes, info.has_split) == ("bfloat16", 4, True)
    arrays = load_embeddings(path)
    assert arrays.embeddings.dtype == np.float32
    np.testing.assert_array_equal(arrays.embeddings, t.float().numpy())
    np.testing.assert_array_equal(arrays.split, np.zeros(40, dtype=np.int8))


def test_pt_bare_tensor(tmp_path):
    t = torch.randn(30, 4)
    torch.save(t, tmp_path / "e.pt")
    info = inspect_embeddings(tmp_path / "e.pt")
    assert (info.format, info.n, info.d, info.dtype, info.has_labels) == ("pt", 30, 4, "float32", False)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "e.pt").embeddings, t.numpy())


def test_pt_dict_of_tensors(tmp_path):
    t = torch.randn(30, 4, dtype=torch.float64)
    labels = torch.arange(30) % 3
    split = (torch.arange(30) % 2).to(torch.int8)
    poison = torch.arange(30) == 5
    torch.save(
        {"embeddings": t, "labels": labels, "split": split, "poison": poison, "meta": 1}, tmp_path / "d.pt"
    )
    info = inspect_embeddings(tmp_path / "d.pt")
    assert info.labels_sha256 == hashlib.sha256((np.arange(30) % 3).astype("<i8").tobytes()).hexdigest()
    assert info == EmbeddingsInfo("pt", 30, 4, "float64", True, True, True, 3, ("meta",),
                                  labels_sha256=info.labels_sha256)
    arrays = load_embeddings(tmp_path / "d.pt")
    np.testing.assert_array_equal(arrays.embeddings, t.numpy())
    np.testing.assert_array_equal(arrays.labels, labels.numpy())
    np.testing.assert_array_equal(arrays.split, split.numpy())
    np.testing.assert_array_equal(arrays.poison, poison.numpy().astype(np.int8))


@pytest.mark.parametrize(
    "make_view",
    [
        lambda b: b.t(),  # transposed: stride (1, 9)
        lambda b: b[2:12:3, 1:7],  # offset + row step: non-contiguous
        lambda b: b[5:15],  # contiguous slice with a storage offset
    ],
)
def test_pt_views(tmp_path, make_view):
    base = torch.randn(20, 9)
    view = make_view(base)
    torch.save({"embeddings": view}, tmp_path / "v.pt")  # torch saves the whole storage + offset/stride
    assert inspect_embeddings(tmp_path / "v.pt", chunk_rows=2).n == view.shape[0]
    emb = load_embeddings(tmp_path / "v.pt").embeddings
    assert emb.flags.c_contiguous
    np.testing.assert_array_equal(emb, view.numpy())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pt_half_precision(tmp_path, dtype):
    t = torch.randn(12, 5).to(dtype)
    torch.save(t, tmp_path / "h.pt")
    info = inspect_embeddings(tmp_path / "h.pt")
    assert info.dtype == str(dtype).removeprefix("torch.")
    emb = load_embeddings(tmp_path / "h.pt").embeddings
    np.testing.assert_array_equal(emb, t.float().numpy() if dtype == torch.bfloat16 else t.numpy())


def test_detect_format_uses_content_over_name(tmp_path):
    np.save(tmp_path / "e.npy", _emb())
    os.rename(tmp_path / "e.npy", tmp_path / "e.safetensors")
    assert detect_format(tmp_path / "e.safetensors") == "npy"
    torch.save(torch.zeros(2, 2), tmp_path / "x.bin")
    assert detect_format(tmp_path / "x.bin", filename="upload.npz") == "pt"
    assert set(FORMATS) == {"npy", "npz", "safetensors", "pt"}


# ---------------------------------------------------------------- refused content


@pytest.mark.parametrize(
    ("array", "substring"),
    [
        (np.zeros(100, np.float32), "embeddings must be a 2-D array (N x D); got shape (100,)"),
        (np.zeros((4, 3, 2), np.float32), "got shape (4, 3, 2)"),
        (np.zeros((0, 3), np.float32), "at least one row"),
        (np.arange(12).reshape(4, 3), "embeddings dtype int64 is not floating point"),
    ],
)
def test_bad_embeddings_shape_or_dtype(tmp_path, array, substring):
    np.save(tmp_path / "bad.npy", array)
    _refused(tmp_path / "bad.npy", substring)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_counted(tmp_path, value):
    x = _emb(n=100)
    x[[3, 57, 99], [0, 4, 7]] = value
    np.save(tmp_path / "nan.npy", x)
    _refused(tmp_path / "nan.npy", "embeddings contain 3 non-finite values (NaN or Inf)", chunk_rows=10)
    np.savez_compressed(tmp_path / "nan.npz", embeddings=x)  # streamed chunk path
    _refused(tmp_path / "nan.npz", "3 non-finite", chunk_rows=10)


def test_non_finite_bf16_safetensors(tmp_path):
    t = torch.randn(10, 3).bfloat16()
    t[9, 2] = float("nan")
    st_save_torch({"embeddings": t}, str(tmp_path / "b.safetensors"))
    _refused(tmp_path / "b.safetensors", "1 non-finite")


@pytest.mark.parametrize(
    ("extra", "substring"),
    [
        ({"labels": np.zeros(99, np.int64)}, "labels has 99 entries but embeddings has 100 rows"),
        ({"labels": np.zeros(100, np.float32)}, "labels dtype float32 is not an integer type"),
        ({"labels": np.zeros((100, 2), np.int64)}, "labels must be a 1-D array"),
        (
            {"split": np.full(100, 2, np.int8)},
            "split must contain only 0 (train) and 1 (test); found value 2",
        ),
        ({"poison": np.full(100, -1, np.int64)}, "poison must contain only 0 and 1"),
        ({"split": np.zeros(100, np.float64)}, "split dtype float64 is not an integer type"),
    ],
)
def test_bad_sidecar_arrays(tmp_path, extra, substring):
    np.savez(tmp_path / "bad.npz", embeddings=_emb(n=100), **extra)
    _refused(tmp_path / "bad.npz", substring)
    st_save_numpy({"embeddings": _emb(n=100), **extra}, str(tmp_path / "bad.safetensors"))
    _refused(tmp_path / "bad.safetensors", substring)


def test_missing_embeddings(tmp_path):
    np.savez(tmp_path / "m.npz", labels=np.zeros(3, np.int64))
    _refused(tmp_path / "m.npz", "no 'embeddings' array")


def test_max_elements(tmp_path):
    np.save(tmp_path / "e.npy", _emb(n=50, d=8))
    _refused(tmp_path / "e.npy", "more than the limit of 399", max_elements=399)
    assert inspect_embeddings(tmp_path / "e.npy", max_elements=400).n == 50


@pytest.mark.parametrize("content", [np.random.default_rng(1).bytes(4096), b"id,x,y\n1,0.5,0.25\n" * 20, b""])
def test_unknown_format(tmp_path, content):
    (tmp_path / "f.csv").write_bytes(content)
    _refused(tmp_path / "f.csv", "unknown file format: expected .npy, .npz, .safetensors or .pt")


# ---------------------------------------------------------------- truncated and corrupt files


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "e.npy", _emb(n=100, d=10))  # 4000 data bytes
    data = (tmp_path / "e.npy").read_bytes()
    (tmp_path / "e.npy").write_bytes(data[: len(data) - 2800])
    _refused(tmp_path / "e.npy", "file is truncated: header declares 4000 bytes of data, file has 1200")


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "e.npz", embeddings=_emb(n=100))
    data = (tmp_path / "e.npz").read_bytes()
    (tmp_path / "e.npz").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "e.npz", "corrupt or truncated")


def test_truncated_safetensors(tmp_path):
    st_save_numpy({"embeddings": _emb(n=100, d=10)}, str(tmp_path / "e.safetensors"))
    data = (tmp_path / "e.safetensors").read_bytes()
    (tmp_path / "e.safetensors").write_bytes(data[:-100])
    _refused(
        tmp_path / "e.safetensors", "file is truncated: header declares 4000 bytes of data, file has 3900"
    )


def _write_safetensors(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("header", "substring"),
    [
        ({"embeddings": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}, "file is truncated"),
        ({"embeddings": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, "needs 16"),
        (
            {
                "embeddings": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "labels": {"dtype": "I64", "shape": [2], "data_offsets": [8, 24]},
            },
            "not contiguous",
        ),
        (
            {"embeddings": {"dtype": "F8_E4M3", "shape": [4, 4], "data_offsets": [0, 16]}},
            "unsupported safetensors dtype",
        ),
        ({"embeddings": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}}, "invalid shape"),
        ({"embeddings": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}}, "16 unexpected bytes"),
    ],
)
def test_bad_safetensors_headers(tmp_path, header, substring):
    _write_safetensors(tmp_path / "x.safetensors", header, bytes(24))
    _refused(tmp_path / "x.safetensors", substring)


def test_safetensors_invalid_json_is_format_error(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 6) + b"{oops!" + bytes(8))
    _refused(tmp_path / "x.safetensors", "invalid .safetensors file")


# ---------------------------------------------------------------- hostile archives


def test_npz_object_array_refused(tmp_path):
    np.savez(tmp_path / "o.npz", embeddings=np.array([[1.0, "a"]], dtype=object))
    _refused(tmp_path / "o.npz", "object and structured arrays")


def test_npz_member_size_inconsistent_with_header(tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 1000)}
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("embeddings.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(4096))
    _refused(tmp_path / "bomb.npz", "inconsistent")


def test_npz_nested_path_and_member_count(tmp_path):
    with zipfile.ZipFile(tmp_path / "nested.npz", "w") as zf:
        zf.writestr("../embeddings.npy", b"")
    _refused(tmp_path / "nested.npz", "nested path")
    with zipfile.ZipFile(tmp_path / "many.npz", "w") as zf:
        for i in range(17):
            zf.writestr(f"m{i}.npy", b"")
    _refused(tmp_path / "many.npz", "at most 16")


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _pt_like_zip(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")


def test_malicious_pickle_in_pt_is_not_executed(tmp_path):
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Touch(live)))  # the payload really does run under a plain unpickler
    assert live.exists()

    marker = tmp_path / "marker"
    _pt_like_zip(tmp_path / "evil.pt", pickle.dumps({"embeddings": _Touch(marker)}))
    for call in (inspect_embeddings, load_embeddings):
        with pytest.raises(FormatError, match=r"forbidden global '[\w.]*Path\.touch'"):
            call(tmp_path / "evil.pt")
    assert not marker.exists()

    marker2 = tmp_path / "pwned"
    _pt_like_zip(tmp_path / "evil2.pt", pickle.dumps(_System(f"echo pwned > {marker2}")))
    msg = _refused(tmp_path / "evil2.pt", "only weights-only tensor files are accepted")
    assert "system" in msg and "forbidden global" in msg
    assert not marker2.exists()


def _tensor_pickle(offset: int, size: tuple, stride: tuple, numel: int) -> bytes:
    """Hand-written data.pkl (protocol 0/1 opcodes) for one float tensor, as torch.save writes it."""

    def tup(v):
        return b"(" + b"".join(b"I%d\n" % i for i in v) + b"t"

    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n("
        + b"(Vstorage\nctorch\nFloatStorage\nV0\nVcpu\nI%d\ntQ" % numel
        + b"I%d\n" % offset + tup(size) + tup(stride)
        + b"I00\nccollections\nOrderedDict\n)RtR."
    )  # fmt: skip


def test_hand_written_pt_and_out_of_bounds_view(tmp_path):
    storage = np.arange(12, dtype=np.float32)

    def write(name, pkl):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("archive/data.pkl", pkl)
            zf.writestr("archive/data/0", storage.tobytes())
        return tmp_path / name

    ok = write("ok.pt", _tensor_pickle(2, (3, 2), (1, 3), 12))
    np.testing.assert_array_equal(load_embeddings(ok).embeddings, [[2, 5], [3, 6], [4, 7]])
    _refused(write("oob.pt", _tensor_pickle(4, (3, 4), (4, 1), 12)), "beyond the end of its storage")
    _refused(write("numel.pt", _tensor_pickle(0, (3, 4), (4, 1), 1000)), "holds 48 bytes, expected 4000")
    _refused(write("garbage.pt", b"\x80\x02not a pickle"), "invalid .pt file")


def test_plain_pickle_and_legacy_torch_refused(tmp_path):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"embeddings": [[1.0, 2.0]]}))
    _refused(tmp_path / "p.pt", "legacy torch.save format is not supported")
    torch.save(torch.zeros(3, 2), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    _refused(tmp_path / "legacy.pt", "_use_new_zipfile_serialization=True")


def test_pt_parameter_and_non_tensor_refused(tmp_path):
    torch.save({"embeddings": torch.nn.Parameter(torch.zeros(3, 2))}, tmp_path / "param.pt")
    _refused(tmp_path / "param.pt", "forbidden global 'torch._utils._rebuild_parameter'")
    torch.save({"embeddings": [1.0, 2.0]}, tmp_path / "list.pt")
    _refused(tmp_path / "list.pt", "'embeddings' in .pt file is not a tensor")


def test_module_does_not_import_torch():
    code = "import repscope.formats, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_pt_expanded_view_refused(tmp_path):
    torch.save(torch.zeros(1, 4).expand(1000, 4), tmp_path / "x.pt")  # stride 0: 4000 elements from 4 stored
    _refused(tmp_path / "x.pt", "more elements than its storage")


def test_load_embeddings_checks_values_too(tmp_path):
    x = _emb(n=30)
    x[29, 0] = np.nan
    np.savez_compressed(tmp_path / "n.npz", embeddings=x)
    with pytest.raises(FormatError, match="1 non-finite"):
        load_embeddings(tmp_path / "n.npz")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "n.npz", check_finite=False).embeddings, x)
    np.savez(tmp_path / "s.npz", embeddings=_emb(n=30), split=np.full(30, 3, np.int8))
    with pytest.raises(FormatError, match="found value 3"):
        load_embeddings(tmp_path / "s.npz")


def test_views_array_round_trips_and_is_validated(tmp_path):
    """An N x q x D 'views' array (q augmented views per row, for LiDAR) travels with the embeddings."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((20, 6)).astype(np.float32)
    views = rng.standard_normal((20, 3, 6)).astype(np.float32)
    path = tmp_path / "v.npz"
    np.savez(path, embeddings=z, views=views)
    info = inspect_embeddings(path)
    assert info.n_views == 3 and "views" not in info.extra_keys
    np.testing.assert_array_equal(load_embeddings(path).views, views)
    np.savez(path, embeddings=z, views=views[:, :1])
    with pytest.raises(FormatError, match="views must be N x q x D"):
        inspect_embeddings(path)
    bad = views.copy()
    bad[2, 1, 0] = np.nan
    np.savez(path, embeddings=z, views=bad)
    with pytest.raises(FormatError, match="views contain 1 non-finite"):
        inspect_embeddings(path)
