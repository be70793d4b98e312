"""Server dataset folders: which layout a folder holds and what it holds, from names and sizes alone.

Standard library only: the API (registration) and the worker (reading) both use it; nothing is decoded here.
- folder           ImageFolder (torchvision.datasets.ImageFolder): [wrapper/][train|val|test/]<class>/<image>
- dinov2-imagenet  DINOv2's ImageNet root (dinov2/data/datasets/image_net.py): train/<wnid>/<img>,
                   val/<wnid>/<img>, test/<img> (flat, unlabelled: skipped with a note), labels.txt of csv rows
                   `wnid,name`; class index = sorted wnids (ImageFolder order, as DINOv2)
- cifar10-bin      CIFAR-10 binary version (https://www.cs.toronto.edu/~kriz/cifar.html): data_batch_1..5.bin
                   (train), test_batch.bin (test); 3 073-byte records: label, 1 024 R, 1 024 G, 1 024 B bytes
                   (32 x 32 row-major); names in batches.meta.txt
- cifar100-bin     CIFAR-100 binary version: train.bin, test.bin; 3 074-byte records: coarse label, fine label,
                   3 072 pixels as above; fine_label_names.txt, coarse_label_names.txt
- stl10-bin        STL-10 binary (stl10_input.py): {train,test}_X.bin, 3 x 96 x 96 bytes per image (each channel
                   column-major), {train,test}_y.bin uint8 labels 1..10, class_names.txt; unlabeled_X.bin ignored
CIFAR's Python version (data_batch_1, test_batch, batches.meta; CIFAR-100's train, test, meta) is pickled and
refused: nothing here or in the worker ever unpickles. A layout may sit in one wrapping folder (as the tarballs
unpack: cifar-10-batches-bin/, cifar-100-binary/, stl10_binary/). Links must resolve under the dataset root;
links to folders are not followed (os.walk's default, as the worker reads).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from repscope import file_list_layout as file_lists
from repscope import shard_layout as shards
from repscope.datasets import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pnm", ".tif", ".tiff")
SPLIT_DIRS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 1}
IGNORED_PARTS = ("__MACOSX",)
SPLIT_NAMES = ("train", "test")  # split 0, 1
DINOV2_LABELS = "labels.txt"
DINOV2_SPLITS = {"train": 0, "val": 1}  # test/ holds no labels
MAX_NAMES_BYTES = 1 << 20  # a class-names or labels.txt file
MAX_SCAN_FILES = 2_000_000  # repscope.datasets.DatasetLimits.max_images
PICKLE_ERROR = "CIFAR's Python pickles are never unpickled; use the binary version (cifar-10-binary.tar.gz)"
CIFAR10_PICKLES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
PICKLE_FOLDERS = ("cifar-10-batches-py", "cifar-100-python")


@dataclass(frozen=True)
class BinarySpec:
    """One binary layout: record size, inline label bytes (0: a separate label file), files per split."""

    format: str
    record: int
    label_bytes: int
    shape: tuple[int, int, int]
    n_classes: int
    files: tuple[tuple[str, int, str | None], ...]  # (image file, split, label file or None)
    names_file: str
    label_base: int = 0
    coarse: tuple[int, str] | None = None  # CIFAR-100: (number of coarse classes, names file)
    ignored: tuple[str, ...] = ()


CIFAR10 = BinarySpec("cifar10-bin", 1 + 3072, 1, (32, 32, 3), 10,
                     (*((f"data_batch_{i}.bin", 0, None) for i in range(1, 6)), ("test_batch.bin", 1, None)),
                     "batches.meta.txt")
CIFAR100 = BinarySpec("cifar100-bin", 2 + 3072, 2, (32, 32, 3), 100, (("train.bin", 0, None), ("test.bin", 1, None)),
                      "fine_label_names.txt", coarse=(20, "coarse_label_names.txt"))
STL10 = BinarySpec("stl10-bin", 3 * 96 * 96, 0, (96, 96, 3), 10,
                   (("train_X.bin", 0, "train_y.bin"), ("test_X.bin", 1, "test_y.bin")), "class_names.txt",
                   label_base=1, ignored=("unlabeled_X.bin",))
BINARY_SPECS = {s.format: s for s in (CIFAR10, CIFAR100, STL10)}


@dataclass(frozen=True)
class BinaryPart:
    name: str  # the file's name in the layout
    path: Path  # resolved, under the dataset root
    split: int
    n: int
    labels: Path | None  # STL-10's label file (resolved)


@dataclass
class FolderLayout:
    format: str  # folder | dinov2-imagenet | cifar10-bin | cifar100-bin | stl10-bin | webdataset
    layout_root: str  # where the layout starts, relative to the folder: '.' or its wrapping folder(s)
    n: int
    classes: list[str]
    image_shape: list[int] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # images per class (trees), per split (binaries)
    files: list[str] = field(default_factory=list)  # binaries: the files read
    notes: list[str] = field(default_factory=list)

    def to_meta(self) -> dict[str, Any]:
        """What the Dataset row's own columns (format, n, classes, image_shape) do not hold."""
        return {k: v for k, v in asdict(self).items() if k not in ("format", "n", "classes", "image_shape")}


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_PARTS


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
    except OSError as e:
        raise DatasetError(f"cannot list {str(folder)!r}: {e.strerror or e}") from None


def _holds_image(folder: Path) -> bool:
    """Whether a folder holds an image file directly (stops at the first)."""
    try:
        with os.scandir(folder) as it:
            return any(_visible(e.name) and _is_image(e.name) and e.is_file() for e in it)
    except OSError:
        return False


def _binary_format(names: set[str]) -> str | None:
    for spec in BINARY_SPECS.values():
        if any(f in names for f, _, _ in spec.files):
            return spec.format
    return None


def _marks(folder: Path) -> str | None:
    """The format a folder's own entries announce (binary or DINOv2), or None (ImageFolder or nothing)."""
    entries = _entries(folder)
    files = {e.name for e in entries if e.is_file()}
    dirs = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    fmt = _binary_format(files) or shards.shard_format(entries) or file_lists.list_format(folder, files)
    if fmt:
        return fmt
    if files & CIFAR10_PICKLES or ("meta" in files and files & {"train", "test"}) or dirs & set(PICKLE_FOLDERS) \
            or folder.name in PICKLE_FOLDERS:
        raise DatasetError(f"{folder.name!r} holds CIFAR's Python version: {PICKLE_ERROR}")
    if dirs & set(DINOV2_SPLITS) and dirs <= {*DINOV2_SPLITS, "test"} and (
            DINOV2_LABELS in files or ("test" in dirs and _holds_image(folder / "test"))):
        return "dinov2-imagenet"
    return None


def detect_layout(folder: Path) -> tuple[str, Path]:
    """(format, layout root) of a server folder: its own names, else those of its one wrapping folder."""
    fmt = _marks(folder)
    if fmt:
        return fmt, folder
    entries = _entries(folder)
    if len(entries) == 1 and entries[0].is_dir(follow_symlinks=False):
        inner = folder / entries[0].name
        fmt = _marks(inner)
        if fmt:
            return fmt, inner
    return "folder", folder


def inside(path: Path, root: Path, what: str) -> Path:
    """`path` with links resolved; refused unless it stays under `root` (the resolved dataset root)."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise DatasetError(f"{what!r} links outside the configured dataset roots")
    return real


def read_names(path: Path, expected: int, root: Path) -> list[str] | None:
    """Class names, one a line (blank lines dropped), or None when the file is absent; the count must match."""
    if not path.is_file():
        return None
    real = inside(path, root, path.name)
    if real.stat().st_size > MAX_NAMES_BYTES:
        raise DatasetError(f"{path.name!r} is over {MAX_NAMES_BYTES} bytes; it should hold {expected} class names")
    names = [line.strip() for line in real.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n]
    if len(names) != expected:
        raise DatasetError(f"{path.name!r} holds {len(names)} class names; {expected} expected")
    return names


def binary_parts(spec: BinarySpec, layout_root: Path, root: Path) -> list[BinaryPart]:
    """The image files of a binary layout that are present, their sizes checked against the record length."""
    parts = []
    for fname, split, label_name in spec.files:
        path = layout_root / fname
        if not path.exists() and not path.is_symlink():
            continue
        real = inside(path, root, fname)
        if not real.is_file():
            raise DatasetError(f"{fname!r} is not a regular file")
        size = real.stat().st_size
        if size == 0 or size % spec.record:
            raise DatasetError(f"{fname!r} is truncated: {size} bytes is not a whole number of "
                               f"{spec.record}-byte records")
        n, labels = size // spec.record, None
        if label_name:
            lpath = layout_root / label_name
            if not lpath.exists():
                raise DatasetError(f"{fname!r} has no label file: {label_name!r} is missing")
            labels = inside(lpath, root, label_name)
            if labels.stat().st_size != n:
                raise DatasetError(f"{label_name!r} holds {labels.stat().st_size} labels for the {n} images "
                                   f"of {fname!r}")
        parts.append(BinaryPart(fname, real, split, n, labels))
    if not parts:
        raise DatasetError(f"no {spec.format} image files found (expected {', '.join(f for f, _, _ in spec.files)})")
    return parts


def binary_classes(spec: BinarySpec, layout_root: Path, root: Path) -> list[str]:
    names = read_names(layout_root / spec.names_file, spec.n_classes, root)
    return names or [str(i) for i in range(spec.n_classes)]


def dinov2_labels(layout_root: Path, root: Path) -> dict[str, str]:
    """labels.txt as DINOv2 reads it (csv rows `wnid,name`); empty when absent."""
    path = layout_root / DINOV2_LABELS
    if not path.is_file():
        return {}
    real = inside(path, root, DINOV2_LABELS)
    if real.stat().st_size > MAX_NAMES_BYTES:
        raise DatasetError(f"{DINOV2_LABELS!r} is over {MAX_NAMES_BYTES} bytes")
    labels = {}
    for i, row in enumerate(csv.reader(io.StringIO(real.read_text(encoding="utf-8", errors="replace"))), 1):
        if not row:
            continue
        if len(row) != 2:
            raise DatasetError(f"{DINOV2_LABELS!r} line {i} must be `wnid,class name`; got {len(row)} fields")
        labels[row[0].strip()] = row[1].strip()
    return labels


def class_names(wnids: list[str], labels: dict[str, str]) -> list[str]:
    """Names for sorted class folders: labels.txt's name, or the folder name; a repeated name gets its wnid
    (ImageNet has two 'crane' and two 'maillot' classes)."""
    names = [labels.get(w) or w for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids, strict=True)]


def dinov2_items(rel_paths: Iterable[str], prefix: str) -> tuple[list[tuple[str, int, str]], int]:
    """(path, split, wnid) of DINOv2's train/<wnid>/<img> and val/<wnid>/<img> under `prefix` (the layout root
    relative to the folder: '.' or one wrapping folder), and how many test/ images were skipped."""
    items, skipped = [], 0
    for p in rel_paths:
        parts = PurePosixPath(p).parts
        if any(not _visible(part) for part in parts) or not _is_image(parts[-1]):
            continue
        rel = PurePosixPath(p).relative_to(prefix).parts if prefix not in ("", ".") else parts
        if rel[0] == "test":
            skipped += 1
        elif len(rel) == 3 and rel[0] in DINOV2_SPLITS:
            items.append((p, DINOV2_SPLITS[rel[0]], rel[1]))
        else:
            raise DatasetError(f"{p!r} is not in DINOv2's layout (train/<wnid>/<image>, val/<wnid>/<image>, "
                               f"test/<image>)")
    if not items:
        raise DatasetError("DINOv2 layout holds no images under train/<wnid>/ or val/<wnid>/")
    return sorted(items), skipped


def _count_images(folder: Path, rel: str, root: Path) -> int:
    """Images directly in a class folder (links resolved under the root); none is an error naming it."""
    n = 0
    for e in _entries(folder):
        if e.is_symlink():
            inside(folder / e.name, root, f"{rel}/{e.name}")
        if e.is_file() and _is_image(e.name):
            n += 1
    if n == 0:
        raise DatasetError(f"class folder {rel!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return n


def _class_dirs(folder: Path, rel: str, root: Path) -> list[str]:
    names = []
    for e in _entries(folder):
        where = f"{rel}/{e.name}" if rel else e.name
        if e.is_symlink() and e.is_dir():
            inside(folder / e.name, root, where)
            raise DatasetError(f"{where!r} is a link to a folder; links to folders are not followed")
        if e.is_dir(follow_symlinks=False):
            names.append(e.name)
        elif _is_image(e.name):
            raise DatasetError(f"{where!r} is not inside a class folder (expected <class>/<image> or "
                               f"<train|test>/<class>/<image>)")
    return names


def _scan_tree(base: Path, prefix: str, splits: dict[str, int], root: Path, max_files: int) -> dict[str, int]:
    """Images per class over split folders (the names in `splits` present in `base`) or, with none, class
    folders directly in `base`."""
    per_class: dict[str, int] = {}
    total = 0
    groups = [(base / s, f"{prefix}{s}") for s in splits if (base / s).is_dir()] or [(base, prefix.rstrip("/"))]
    for folder, rel in groups:
        for cls in _class_dirs(folder, rel, root):
            k = _count_images(folder / cls, f"{rel}/{cls}" if rel else cls, root)
            per_class[cls], total = per_class.get(cls, 0) + k, total + k
            if total > max_files:
                raise DatasetError(f"folder has more than {max_files} images")
    if not per_class:
        raise DatasetError("folder holds no class folders (expected <class>/<image>)")
    return dict(sorted(per_class.items()))


def _tree_base(folder: Path) -> tuple[Path, str]:
    """Skip single wrapping folders that hold no image of their own, as the worker's reader does."""
    base, prefix = folder, ""
    while True:
        entries = _entries(base)
        if len(entries) != 1 or not entries[0].is_dir(follow_symlinks=False):
            return base, prefix
        inner = base / entries[0].name
        if _holds_image(inner):
            return base, prefix
        base, prefix = inner, f"{prefix}{entries[0].name}/"


def describe_folder(folder: Path, root: Path, max_files: int = MAX_SCAN_FILES) -> FolderLayout:
    """Format, size and classes of a server folder (resolved, under the resolved `root`), for registration."""
    fmt, layout_root = detect_layout(folder)
    rel_root = layout_root.relative_to(folder).as_posix()
    if fmt in BINARY_SPECS:
        spec = BINARY_SPECS[fmt]
        parts = binary_parts(spec, layout_root, root)
        counts = {s: sum(p.n for p in parts if p.split == i) for i, s in enumerate(SPLIT_NAMES)}
        notes = [f"{f} ignored (unlabelled)" for f in spec.ignored if (layout_root / f).exists()]
        return FolderLayout(fmt, rel_root, sum(counts.values()), binary_classes(spec, layout_root, root),
                            list(spec.shape), counts, [p.name for p in parts], notes)
    if fmt == shards.FORMAT:
        return FolderLayout(fmt, rel_root, *shards.describe_shards(layout_root, root, max_files))
    if fmt == file_lists.FORMAT:
        items, names = file_lists.read_lists(layout_root, max_files)
        counts = {s: sum(1 for _, sp, _ in items if sp == i) for i, s in enumerate(SPLIT_NAMES)}
        return FolderLayout(fmt, rel_root, len(items), names, None, counts)
    if fmt == "dinov2-imagenet":
        prefix = "" if rel_root == "." else f"{rel_root}/"
        per_class = _scan_tree(layout_root, prefix, DINOV2_SPLITS, root, max_files)
        notes = []
        if (layout_root / "test").is_dir():
            n_test = sum(1 for e in _entries(layout_root / "test") if _is_image(e.name))
            notes.append(f"test/: {n_test} unlabelled images skipped (DINOv2's test split has no labels)")
        names = class_names(list(per_class), dinov2_labels(layout_root, root))
        return FolderLayout(fmt, rel_root, sum(per_class.values()), names, None, per_class, notes=notes)
    base, prefix = _tree_base(folder)
    tops = _class_dirs(base, prefix.rstrip("/"), root)
    splits = {s: SPLIT_DIRS[s] for s in tops} if tops and set(tops) <= set(SPLIT_DIRS) else {}
    per_class = _scan_tree(base, prefix, splits, root, max_files)
    return FolderLayout("folder", prefix.rstrip("/") or ".", sum(per_class.values()), list(per_class),
                        None, per_class)

