"""Server ImageFolder / DINOv2 folders listed without decoding: every image file with its class and split,
a class subset and a per-class cap; all under the configured roots (links resolved)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from repscope import dataset_layouts as layouts
from repscope import file_list_layout as file_lists
from repscope import shard_layout
from repscope.dataset_layouts import IGNORED_PARTS, IMAGE_EXTENSIONS, SPLIT_DIRS
from repscope.datasets import DatasetError as LayoutDatasetError

from .builtin import stratified_split
from .errors import DatasetError

MAX_MEMBERS = 200_000
log = logging.getLogger(__name__)


def _layout(paths: Iterable[str]) -> list[tuple[str, int | None, str]]:
    """(path, split or None, class) for each image path of an ImageFolder tree: [wrapper/][train|test/]class/file.

    One top-level folder wrapping everything is skipped; top-level folders all in SPLIT_DIRS give the split.
    """
    files = []
    for p in paths:
        parts = PurePosixPath(p.replace("\\", "/")).parts
        if any(part.startswith(".") or part in IGNORED_PARTS for part in parts):
            continue
        if parts and parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            files.append((p, parts))
    if not files:
        raise DatasetError(f"no image files found (expected class folders of {', '.join(IMAGE_EXTENSIONS)})")
    depth = 0
    while len({parts[depth] for _, parts in files if len(parts) > depth + 1}) == 1 and all(
        len(parts) > depth + 2 for _, parts in files
    ):
        depth += 1  # a single wrapping folder
    tops = {parts[depth] for _, parts in files}
    by_split = all(len(parts) - depth == 3 for _, parts in files) and tops <= set(SPLIT_DIRS)
    out = []
    for p, parts in files:
        rel = parts[depth:]
        if by_split:
            out.append((p, SPLIT_DIRS[rel[0]], rel[1]))
        elif len(rel) == 2:
            out.append((p, None, rel[0]))
        else:
            raise DatasetError(f"{p!r} is not inside a class folder (expected <class>/<image> or "
                               f"<train|test>/<class>/<image>)")  # fmt: skip
    return sorted(out, key=lambda t: t[0])


@dataclass
class FolderItems:
    """The image files of a server folder (ImageFolder tree or DINOv2 layout), listed without decoding."""

    folder: Path  # resolved
    paths: list[str]  # relative to `folder`, sorted
    labels: np.ndarray  # int64
    split: np.ndarray  # int8, 0 train / 1 test
    classes: list[str]
    name: str


def _checked_folder(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> tuple[Path, Path]:
    """(folder, its root), both resolved; refused unless the folder lies under one of ``roots``."""
    if not roots:
        raise DatasetError("no dataset roots are configured on this worker; server folders are disabled")
    resolved_roots = [Path(r).resolve() for r in roots]
    try:
        folder = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as e:
        raise DatasetError(f"dataset folder {str(path)!r} does not exist") from e
    root = next((r for r in resolved_roots if folder.is_relative_to(r)), None)
    if root is None:
        raise DatasetError(f"dataset folder {str(path)!r} is outside the configured dataset roots")
    if not folder.is_dir():
        raise DatasetError(f"{str(path)!r} is not a folder")
    return folder, root


def folder_items(path: str | os.PathLike, roots: Sequence[str | os.PathLike], *, name: str | None = None,
                 max_members: int = MAX_MEMBERS, classes: Sequence[str] | None = None,
                 per_class: int | None = None) -> FolderItems | None:
    """The labelled image files of an ImageFolder / DINOv2 folder (every file, links resolved, under the root),
    or None for the other layouts (binaries, shards: read whole by read_image_folder). ``classes``: only these
    (folder names, e.g. ImageNet wnids, or DINOv2 names); ``per_class``: the first k files per class and split."""
    folder, root = _checked_folder(path, roots)
    try:
        fmt, layout_root = layouts.detect_layout(folder)
        if fmt in layouts.BINARY_SPECS:
            return None
        if fmt == shard_layout.FORMAT:
            return _shard_items(folder, root, layout_root, name, max_members, classes, per_class)
        if fmt == file_lists.FORMAT:
            return _listed(folder, root, layout_root, name, max_members, classes, per_class)
        rel_paths = []
        for dirpath, dirnames, filenames in os.walk(folder):  # does not follow directory symlinks
            dirnames.sort()
            for fn in sorted(filenames):
                rel_paths.append(Path(dirpath, fn).relative_to(folder).as_posix())
                if len(rel_paths) > max_members:
                    raise DatasetError(f"folder has more than {max_members} files")
        wnid_names = layouts.dinov2_labels(layout_root, root) if fmt == "dinov2-imagenet" else None
        if wnid_names is None:
            items = _layout(rel_paths)
        else:  # DINOv2's ImageNet: train/<wnid>/, val/<wnid>/; test/ has no labels
            items, skipped = layouts.dinov2_items(rel_paths, layout_root.relative_to(folder).as_posix())
            log.info("DINOv2 layout %s: %d unlabelled test/ images skipped", folder, skipped)
    except LayoutDatasetError as e:
        raise DatasetError(str(e)) from None
    items = _select(items, classes, per_class, wnid_names or {})
    for rel, _, _ in items:  # every file, links resolved, must stay under the root (before any decoding)
        if not (folder / rel).resolve().is_relative_to(root):
            raise DatasetError(f"{rel!r} links outside the configured dataset roots")
    classes = sorted({c for _, _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for _, _, c in items], dtype=np.int64)
    splits = [s for _, s, _ in items]
    split = np.array(splits, dtype=np.int8) if all(s is not None for s in splits) else stratified_split(labels)
    names = layouts.class_names(classes, wnid_names) if wnid_names is not None else classes
    return FolderItems(folder, [p for p, _, _ in items], labels, split, names, name or folder.name)


def _select(items: list[tuple[str, int | None, str]], classes: Sequence[str] | None, per_class: int | None,
            names: dict[str, str]) -> list[tuple[str, int | None, str]]:
    """A class subset (folder name or display name) and a cap per (class, split), first files by path."""
    if classes is not None:
        wanted = set(classes)
        items = [t for t in items if t[2] in wanted or names.get(t[2]) in wanted]
        if not items:
            raise DatasetError(f"none of the selected classes has images: {sorted(wanted)[:10]}")
    if per_class is not None:
        taken: dict[tuple[int | None, str], int] = {}
        kept = []
        for t in items:
            k = (t[1], t[2])
            if taken.get(k, 0) < per_class:
                taken[k] = taken.get(k, 0) + 1
                kept.append(t)
        items = kept
    return items


def _listed(folder: Path, root: Path, layout_root: Path, name: str | None, max_members: int,
            classes: Sequence[str] | None, per_class: int | None) -> FolderItems:
    """A folder described by label lists (repscope.file_list_layout): labels are the lists' integers."""
    rows, names = file_lists.read_lists(layout_root, max_members)
    prefix = layout_root.relative_to(folder).as_posix()
    items = [(f"{prefix}/{rel}" if prefix != "." else rel, split, names[label]) for rel, split, label in rows]
    items = _select(items, classes, per_class, {})
    for rel, _, _ in items:
        real = (folder / rel).resolve()
        if not real.is_relative_to(root):
            raise DatasetError(f"{rel!r} links outside the configured dataset roots")
        if not real.is_file():
            raise DatasetError(f"{rel!r}, named in the label lists, is not a file in the folder")
    index = {n: i for i, n in enumerate(names)}
    return FolderItems(folder, [r for r, _, _ in items], np.array([index[c] for _, _, c in items], dtype=np.int64),
                       np.array([s for _, s, _ in items], dtype=np.int8), list(names), name or folder.name)


SHARD_SEP = "::"  # "<shard>::<offset>::<size>::<member>": an image member read by seeking in its (uncompressed) shard


def _shard_items(folder: Path, root: Path, layout_root: Path, name: str | None, max_members: int,
                 classes: Sequence[str] | None, per_class: int | None) -> FolderItems | None:
    """Uncompressed webdataset shards as random-access samples (tar headers only; images read by the loader);
    None for compressed shards, which are read whole, front to back."""
    shards = shard_layout.list_shards(layout_root, root)
    if not all(shard_layout.is_uncompressed(s) for s in shards):
        return None
    names = shard_layout.read_classes(layout_root, root)
    rows, budget = [], [shard_layout.MAX_MEMBERS]
    prefix = layout_root.relative_to(folder).as_posix()
    for shard in shards:
        where = f"{prefix}/{shard.name}" if prefix != "." else shard.name
        for s in shard_layout.iter_samples(shard, stream=False, images=False, labels=True, budget=budget):
            if names is not None and s.label >= len(names):
                raise DatasetError(f"{s.where}: label {s.label} is out of range for the {len(names)} classes")
            rows.append((SHARD_SEP.join((where, str(s.offset), str(s.size), s.image)), shard.split, s.label))
            if len(rows) > max_members:
                raise DatasetError(f"shards hold more than {max_members} samples")
    if not rows:
        raise DatasetError("the shards hold no samples (an image and a label per key)")
    names = names or shard_layout.label_classes(max(label for _, _, label in rows))
    items = _select([(p, sp, names[label]) for p, sp, label in rows], classes, per_class, {})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[c] for _, _, c in items], dtype=np.int64)
    splits = [sp for _, sp, _ in items]
    split = np.array(splits, dtype=np.int8) if all(sp is not None for sp in splits) else stratified_split(labels)
    return FolderItems(folder, [p for p, _, _ in items], labels, split, list(names), name or folder.name)


def item_bytes(folder: Path, rel: str) -> bytes:
    """The encoded image of one FolderItems entry: a file, or a member of an uncompressed shard."""
    if SHARD_SEP not in rel:
        return (folder / rel).resolve().read_bytes()
    shard, offset, size, _ = rel.split(SHARD_SEP, 3)
    with open(folder / shard, "rb") as f:
        f.seek(int(offset))
        return f.read(min(int(size), shard_layout.MAX_MEMBER_BYTES))


def display_name(rel: str) -> str:
    """How errors name an entry: the file, or "<shard>:<member>"."""
    if SHARD_SEP not in rel:
        return rel
    shard, _, _, member = rel.split(SHARD_SEP, 3)
    return f"{shard}:{member}"
