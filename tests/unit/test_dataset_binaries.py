"""Server dataset folders beyond ImageFolder: CIFAR-10/100 and STL-10 binaries, DINOv2's ImageNet layout.

Binary files are built here from their published record layouts, byte by byte (struct + per-channel planes),
never with the reader's inverse: CIFAR (https://www.cs.toronto.edu/~kriz/cifar.html) label byte(s) then the R, G
and B 32 x 32 planes row-major; STL-10 (stl10_input.py) 3 x 96 x 96 per image with each plane column-major.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from repscope import datasets as api_datasets
from repscope.dataset_layouts import describe_folder, detect_layout
from worker.datasets import DatasetError
from worker.datasets.readers import read_image_folder

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL_SIDE = 96


def cifar_record(labels: tuple[int, ...], img: np.ndarray) -> bytes:
    """Label byte(s), then the 1 024 R, 1 024 G, 1 024 B bytes, each plane row by row."""
    head = struct.pack(f"{len(labels)}B", *labels)
    planes = b"".join(bytes(int(img[r, c, ch]) for r in range(32) for c in range(32)) for ch in range(3))
    return head + planes


def stl_image(img: np.ndarray) -> bytes:
    """Three 96 x 96 planes, each column by column (Fortran order)."""
    return b"".join(img[:, :, ch].tobytes(order="F") for ch in range(3))


def random_images(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.fixture
def cifar10(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "cifar" / "cifar-10-batches-bin"  # as cifar-10-binary.tar.gz unpacks
    folder.mkdir(parents=True)
    imgs, labels = random_images(7, 32, 0), np.array([3, 9, 0, 1, 5, 2, 9])
    for fname, rows in (("data_batch_1.bin", [0, 1, 2]), ("data_batch_2.bin", [3, 4]), ("test_batch.bin", [5, 6])):
        (folder / fname).write_bytes(b"".join(cifar_record((int(labels[i]),), imgs[i]) for i in rows))
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n\n")
    (folder / "readme.html").write_text("<html></html>")
    return tmp_path, imgs, labels


def test_cifar10_binary_is_read_bit_exactly(cifar10):
    root, imgs, labels = cifar10
    ds = read_image_folder(root / "cifar", roots=[root])
    assert ds.images.dtype == np.uint8 and ds.images.shape == (7, 32, 32, 3)
    assert np.array_equal(ds.images, imgs)
    assert ds.labels.tolist() == labels.tolist() and ds.split.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert ds.classes == CIFAR10_NAMES and ds.name == "cifar"
    info = describe_folder((root / "cifar").resolve(), root.resolve())
    assert (info.format, info.n, info.image_shape, info.classes) == ("cifar10-bin", 7, [32, 32, 3], CIFAR10_NAMES)
    assert info.counts == {"train": 5, "test": 2} and info.layout_root == "cifar-10-batches-bin"
    assert info.files == ["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"]


def test_cifar100_binary_reads_fine_labels_and_keeps_coarse(tmp_path):
    folder = tmp_path / "c100"
    folder.mkdir()
    imgs, fine, coarse = random_images(5, 32, 1), [99, 0, 42, 7, 13], [19, 0, 3, 11, 2]
    recs = [cifar_record((coarse[i], fine[i]), imgs[i]) for i in range(5)]
    (folder / "train.bin").write_bytes(b"".join(recs[:3]))
    (folder / "test.bin").write_bytes(b"".join(recs[3:]))
    (folder / "fine_label_names.txt").write_text("".join(f"fine{i}\n" for i in range(100)))
    ds = read_image_folder(folder, roots=[tmp_path])
    assert np.array_equal(ds.images, imgs) and ds.labels.tolist() == fine and ds.split.tolist() == [0, 0, 0, 1, 1]
    assert ds.factors["coarse_label"].tolist() == coarse and ds.classes[42] == "fine42" and len(ds.classes) == 100
    info = describe_folder(folder, tmp_path)
    assert (info.format, info.n, info.counts) == ("cifar100-bin", 5, {"train": 3, "test": 2})


def write_stl(folder: Path, imgs: np.ndarray, labels: list[int], split: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_X.bin").write_bytes(b"".join(stl_image(im) for im in imgs))
    (folder / f"{split}_y.bin").write_bytes(bytes(labels))


def test_stl10_orientation_and_labels(tmp_path):
    folder = tmp_path / "stl10_binary"
    raw = bytearray(3 * STL_SIDE * STL_SIDE)  # one image, by the published layout: plane c, column-major
    raw[0 * STL_SIDE * STL_SIDE + 5 * STL_SIDE + 0] = 255  # red, row 0, column 5
    raw[2 * STL_SIDE * STL_SIDE + 2 * STL_SIDE + 7] = 77  # blue, row 7, column 2
    folder.mkdir()
    (folder / "train_X.bin").write_bytes(bytes(raw))
    (folder / "train_y.bin").write_bytes(bytes([10]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(1, 11)))
    (folder / "unlabeled_X.bin").write_bytes(b"\x00" * 7)  # never read (not even its size)
    write_stl(folder, random_images(3, STL_SIDE, 2), [1, 4, 10], "test")
    ds = read_image_folder(folder, roots=[tmp_path])
    assert ds.images.shape == (4, 96, 96, 3)
    assert ds.images[0, 0, 5, 0] == 255 and ds.images[0, 7, 2, 2] == 77 and int(ds.images[0].sum()) == 255 + 77
    assert np.array_equal(ds.images[1:], random_images(3, STL_SIDE, 2))
    assert ds.labels.tolist() == [9, 0, 3, 9] and ds.split.tolist() == [0, 1, 1, 1]  # 1..10 read as 0..9
    assert ds.classes[0] == "c1" and ds.classes[9] == "c10"
    info = describe_folder(folder, tmp_path)
    assert (info.format, info.n, info.image_shape) == ("stl10-bin", 4, [96, 96, 3])
    assert info.notes == ["unlabeled_X.bin ignored (unlabelled)"]


@pytest.mark.parametrize("case, words", [
    ("truncated", "'data_batch_1.bin' is truncated: 3072 bytes"),
    ("label 10", "'data_batch_1.bin': record 1 has label 10; expected 0..9"),
    ("stl label 0", "'train_y.bin': record 0 has label 0; expected 1..10"),
    ("stl label 11", "'train_y.bin': record 1 has label 11"),
    ("stl no labels", "'train_X.bin' has no label file: 'train_y.bin' is missing"),
    ("stl label count", "'train_y.bin' holds 3 labels for the 2 images of 'train_X.bin'"),
    ("names count", "'batches.meta.txt' holds 2 class names; 10 expected"),
])
def test_bad_binaries_are_refused_naming_the_file(tmp_path, case, words):
    folder = tmp_path / "ds"
    folder.mkdir()
    img = random_images(2, STL_SIDE, 3)
    if case == "truncated":
        (folder / "data_batch_1.bin").write_bytes(cifar_record((1,), img[0, :32, :32])[:3072])
    elif case in ("label 10", "names count"):
        recs = [cifar_record((lab,), img[0, :32, :32]) for lab in ((1, 10) if case == "label 10" else (1, 2))]
        (folder / "data_batch_1.bin").write_bytes(b"".join(recs))
        (folder / "batches.meta.txt").write_text("a\nb\n")
        if case == "label 10":
            (folder / "batches.meta.txt").unlink()
    elif case == "stl no labels":
        write_stl(folder, img, [1, 2])
        (folder / "train_y.bin").unlink()
    else:
        labels = {"stl label 0": [0, 2], "stl label 11": [1, 11], "stl label count": [1, 2, 3]}[case]
        write_stl(folder, img, labels)
    with pytest.raises(DatasetError) as err:
        read_image_folder(folder, roots=[tmp_path])
    assert words in str(err.value)
    if case not in ("label 10", "stl label 0", "stl label 11"):  # label values are the worker's to read
        with pytest.raises(api_datasets.DatasetError, match=words.replace("(", r"\(").replace(".", r"\.")):
            describe_folder(folder, tmp_path)


@pytest.mark.parametrize("files", [
    {"data_batch_1": b"\x80\x04junk", "batches.meta": b"\x80\x04"},  # cifar-10-batches-py's files
    {"cifar-10-batches-py/data_batch_1": b"\x80\x04junk"},  # the unpacked tarball's folder
    {"train": b"\x80\x04", "test": b"\x80\x04", "meta": b"\x80\x04"},  # cifar-100-python's files
])
def test_pickled_cifar_is_refused(tmp_path, files):
    folder = tmp_path / "ds"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    words = "CIFAR's Python pickles are never unpickled; use the binary version"
    with pytest.raises(DatasetError, match=words):
        read_image_folder(folder, roots=[tmp_path])
    with pytest.raises(api_datasets.DatasetError, match=words):
        describe_folder(folder, tmp_path)


def test_binary_file_linking_out_of_the_root_is_refused(tmp_path, cifar10):
    root = tmp_path / "root"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "test_batch.bin").symlink_to(tmp_path / "cifar" / "cifar-10-batches-bin" / "test_batch.bin")
    with pytest.raises(DatasetError, match="'test_batch.bin' links outside the configured dataset roots"):
        read_image_folder(root / "ds", roots=[root])
    with pytest.raises(api_datasets.DatasetError, match="links outside"):
        describe_folder(root / "ds", root)
    assert detect_layout(root / "ds")[0] == "cifar10-bin"


# ---------------------------------------------------------------- DINOv2's ImageNet layout and ImageFolder trees


def jpeg(rgb: tuple[int, int, int]) -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


COLOURS = {"n01440764": (200, 30, 30), "n02012849": (30, 200, 30), "n03126707": (30, 30, 200)}


def imagenet_tree(root: Path, labels: str | None) -> Path:
    """DINOv2's root: train/<wnid>/<wnid>_<i>.JPEG, val/<wnid>/ILSVRC2012_val_<i>.JPEG, test/ flat."""
    for i, (wnid, rgb) in enumerate(COLOURS.items()):
        for split, fname in (("train", f"{wnid}_{i}.JPEG"), ("val", f"ILSVRC2012_val_{i + 1:08d}.JPEG")):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            (root / split / wnid / fname).write_bytes(jpeg(rgb))
    (root / "test").mkdir()
    for i in (1, 2):
        (root / "test" / f"ILSVRC2012_test_{i:08d}.JPEG").write_bytes(jpeg((9, 9, 9)))
    if labels is not None:
        (root / "labels.txt").write_text(labels)
    return root


def test_dinov2_imagenet_layout_is_read_with_names_and_test_skipped(tmp_path):
    labels = 'n01440764,tench\nn02012849,crane\nn03126707,"crane, the machine"\n'
    folder = imagenet_tree(tmp_path / "imagenet", labels)
    ds = read_image_folder(folder, roots=[tmp_path])
    assert ds.classes == ["tench", "crane", "crane, the machine"]  # index = sorted wnids, as DINOv2
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 2] and ds.split.tolist() == [0, 0, 0, 1, 1, 1]
    for img, label in zip(ds.images, ds.labels, strict=True):  # each file under its own class (JPEG: near)
        assert np.abs(img.astype(int) - COLOURS[sorted(COLOURS)[label]]).max() <= 8
    info = describe_folder(folder, tmp_path)
    assert (info.format, info.n, info.classes) == ("dinov2-imagenet", 6, ds.classes)
    assert info.counts == {w: 2 for w in sorted(COLOURS)}
    assert info.notes == ["test/: 2 unlabelled images skipped (DINOv2's test split has no labels)"]


def test_dinov2_layout_without_labels_and_repeated_names(tmp_path):
    folder = imagenet_tree(tmp_path / "a" / "in1k", None)  # flat test/ alone marks the layout; one wrapper
    assert detect_layout(tmp_path / "a") == ("dinov2-imagenet", folder)
    assert read_image_folder(tmp_path / "a", roots=[tmp_path]).classes == sorted(COLOURS)
    (folder / "labels.txt").write_text("n01440764,crane\nn02012849,crane\n")
    assert read_image_folder(folder, roots=[tmp_path]).classes == ["crane (n01440764)", "crane (n02012849)",
                                                                   "n03126707"]


def test_imagefolder_tree_description(tmp_path):
    for split, cls, k in (("train", "cat", 2), ("train", "dog", 1), ("val", "cat", 1), ("val", "dog", 3)):
        (tmp_path / "w" / split / cls).mkdir(parents=True)
        for i in range(k):
            (tmp_path / "w" / split / cls / f"{i}.png").write_bytes(b"x")
    info = describe_folder(tmp_path / "w", tmp_path)
    assert (info.format, info.n, info.classes, info.counts) == ("folder", 7, ["cat", "dog"], {"cat": 3, "dog": 4})
    (tmp_path / "w" / "val" / "bird").mkdir()
    (tmp_path / "w" / "val" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(api_datasets.DatasetError, match="class folder 'val/bird' holds no images"):
        describe_folder(tmp_path / "w", tmp_path)


def test_register_folder_over_the_api(settings, tmp_path, cifar10):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from tests.conftest import ADMIN_HEADERS

    root = tmp_path
    (root / "pets" / "cat").mkdir(parents=True)
    (root / "pets" / "dog").mkdir(parents=True)
    (root / "pets" / "cat" / "a.png").write_bytes(b"x")
    (root / "py" / "cifar-10-batches-py").mkdir(parents=True)
    (root / "py" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04")
    (root / "outside").mkdir()
    (root / "outside" / "secret.png").write_bytes(b"x")
    (root / "escape" / "cat").mkdir(parents=True)
    (root / "escape" / "cat" / "a.png").symlink_to(tmp_path / "outside" / "secret.png")
    app = create_app(settings.model_copy(update={"dataset_roots": str(root / "pets") + ":" + str(root / "cifar")
                                                 + ":" + str(root / "py") + ":" + str(root / "escape")}),
                     run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        def post(name: str, path: Path):
            return api.post("/api/v1/datasets/folder", json={"name": name, "path": str(path)})

        body = post("c10", root / "cifar").json()
        assert (body["format"], body["n"], body["classes"], body["image_shape"]) == ("cifar10-bin", 7, CIFAR10_NAMES,
                                                                                     [32, 32, 3])
        assert body["meta"]["counts"] == {"train": 5, "test": 2} and body["meta"]["path"] == str(root / "cifar")
        refused = {"pets": "class folder 'dog' holds no images", "py": "never unpickled",
                   "escape": "'cat/a.png' links outside the configured dataset roots"}
        for name, words in refused.items():
            response = post(name, root / name)
            assert response.status_code == 422 and words in response.json()["detail"], response.text
        (root / "pets" / "dog" / "b.jpg").write_bytes(b"x")
        body = post("pets", root / "pets").json()
        assert (body["format"], body["n"], body["classes"]) == ("folder", 2, ["cat", "dog"])
