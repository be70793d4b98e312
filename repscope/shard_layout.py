"""webdataset tar shards as a server dataset folder: the shards, how samples group, what registration records.

Standard library only (the API registers, the worker reads; repscope.dataset_layouts detects the layout here).
Convention (https://github.com/webdataset/webdataset, tariterators.py): a folder of ``*.tar`` shards (and an
optional ``classes.txt``, one class name a line), read in sorted shard order, members in tar order; consecutive
members with the same key form one sample, key and extension split as webdataset's ``base_plus_ext``
(``dir/abc.def.jpg`` -> ``dir/abc``, ``def.jpg``; extensions lower-cased; a name without a dot is skipped).
A sample holds one image (IMAGE_EXTS) and a label: ``cls`` or ``cls.txt`` (ASCII integer), else ``json`` with
an integer "label". Name prefixes ``train-`` / ``val-`` / ``test-`` on every shard give the split (0, 1); with
none, the worker's stratified split applies. Members are only read as bytes (never extracted): links, devices,
absolute or ``..`` names and oversized members are refused, naming the shard.
"""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from repscope.datasets import DatasetError

FORMAT = "webdataset"
SHARD_SUFFIX = ".tar"
CLASSES_FILE = "classes.txt"
SHARD_SPLITS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 1}  # as dataset_layouts.SPLIT_DIRS
SPLIT_NAMES = ("train", "test")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp")
LABEL_EXTS = ("cls", "cls.txt", "json")  # in order of preference
MAX_SHARDS = 100_000
MAX_MEMBERS = 4_000_000  # tar members over all shards (two or more per sample)
MAX_MEMBER_BYTES = 64 << 20  # one image (its pixels are checked again when decoded)
MAX_LABEL_BYTES = 1 << 16  # a cls / cls.txt / json member
MAX_CLASSES = 100_000  # classes implied by the largest label when there is no classes.txt
MAX_NAMES_BYTES = 1 << 20  # classes.txt
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_SPLIT = re.compile(r"^(train|valid|validation|val|test)[-_]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Shard:
    name: str  # file name in the layout root
    path: Path  # resolved, under the dataset root
    bytes: int
    split: int | None  # from the name prefix, or None


@dataclass
class Sample:
    shard: str
    key: str
    image: str | None = None  # the image member's name
    data: bytes | None = None  # its bytes (when read)
    label_ext: str | None = None
    label: int | None = None  # when labels are read
    offset: int | None = None  # the image member's data offset in an uncompressed shard (random access)
    size: int | None = None

    @property
    def where(self) -> str:
        return f"shard {self.shard!r}, sample {self.key!r}"


def shard_format(entries: Sequence[Any]) -> str | None:
    """FORMAT when a folder's visible entries (os.DirEntry) are ``*.tar`` files (one or more) and optionally
    classes.txt; else None."""
    names = [e.name for e in entries]
    shards = [n for n in names if n.endswith(SHARD_SUFFIX)]
    if shards and all(e.is_file() for e in entries) and len(shards) + (CLASSES_FILE in names) == len(names):
        return FORMAT
    return None


def split_key(name: str) -> tuple[str | None, str | None]:
    """(key, extension) as webdataset's base_plus_ext; (None, None) for a name without a dot."""
    m = _KEY.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


def _resolve(path: Path, root: Path) -> Path:
    real = path.resolve()
    if not real.is_relative_to(root):
        raise DatasetError(f"{path.name!r} links outside the configured dataset roots")
    return real


def list_shards(layout_root: Path, root: Path) -> list[Shard]:
    """The shards, sorted by name, resolved under `root`, their split from the name prefixes (all or none)."""
    # hidden files are skipped, as dataset_layouts ignores them when it detects the layout
    names = sorted(p.name for p in layout_root.iterdir() if p.name.endswith(SHARD_SUFFIX) and p.name[0] != ".")
    if not names:
        raise DatasetError(f"no {SHARD_SUFFIX} shards found")
    if len(names) > MAX_SHARDS:
        raise DatasetError(f"{len(names)} shards; at most {MAX_SHARDS} are accepted")
    prefixes = {n: _SPLIT.match(n) for n in names}
    unprefixed = [n for n, m in prefixes.items() if m is None]
    if unprefixed and len(unprefixed) < len(names):
        raise DatasetError(f"shard {unprefixed[0]!r} has no train-/val-/test- name prefix while others do: "
                           f"name every shard by its split, or none (then the split is stratified)")
    shards = []
    for n in names:
        real = _resolve(layout_root / n, root)
        if not real.is_file():
            raise DatasetError(f"shard {n!r} is not a regular file")
        m = prefixes[n]
        shards.append(Shard(n, real, real.stat().st_size, SHARD_SPLITS[m.group(1)] if m else None))
    return shards


def read_classes(layout_root: Path, root: Path) -> list[str] | None:
    """classes.txt (one name a line, blank lines dropped), or None when absent."""
    path = layout_root / CLASSES_FILE
    if not path.exists():
        return None
    real = _resolve(path, root)
    if not real.is_file() or real.stat().st_size > MAX_NAMES_BYTES:
        raise DatasetError(f"{CLASSES_FILE!r} must be a text file of at most {MAX_NAMES_BYTES} bytes")
    names = [line.strip() for line in real.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"{CLASSES_FILE!r} holds no class names")
    return names


def _check_member(info: tarfile.TarInfo, shard: str) -> None:
    """Refuse what could escape or exhaust a reader: the zip checks' spirit (worker.datasets.readers)."""
    name, what = info.name.replace("\\", "/"), f"shard {shard!r}: member {info.name!r}"
    if "\x00" in name or name.startswith("/") or _DRIVE.match(name) or ".." in PurePosixPath(name).parts:
        raise DatasetError(f"{what} has an unsafe name (absolute, '..' or NUL: path traversal is refused)")
    if info.issym() or info.islnk():
        raise DatasetError(f"{what} is a link; links are not allowed")
    if info.isdev():
        raise DatasetError(f"{what} is a device or fifo; only regular files are read")
    if not (info.isreg() or info.isdir()):
        raise DatasetError(f"{what} is not a regular file")
    if info.size > MAX_MEMBER_BYTES:
        raise DatasetError(f"{what} is {info.size} bytes; at most {MAX_MEMBER_BYTES} are read")


def _parse_label(raw: bytes, ext: str, where: str) -> int | None:
    """A cls / cls.txt member's ASCII integer, or a json member's "label" (None when it has none)."""
    try:
        if ext == "json":
            obj = json.loads(raw)
            value = obj.get("label") if isinstance(obj, dict) else None
            if value is None:
                return None
        else:
            text = raw.decode("ascii").strip()
            value = int(text) if text.isdigit() else text
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{where}: {ext!r} is not a label: {e}") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetError(f"{where}: {ext!r} holds {str(value)[:40]!r}; a label is an integer 0, 1, 2, ...")
    return value


def _finish(sample: Sample | None) -> Sample | None:
    """The sample; None when its group holds no image and no cls label (metadata only, skipped as webdataset
    would hand it on); refused when it holds an image without a label or a cls label without an image."""
    if sample is None or (sample.image is None and sample.label_ext in (None, "json")):
        return None
    if sample.image is None:
        raise DatasetError(f"{sample.where} has a label but no image ({', '.join(IMAGE_EXTS)})")
    if sample.label_ext is None:
        raise DatasetError(f"{sample.where} has an image but no label (a cls, cls.txt, or json with 'label')")
    return sample


def _member_bytes(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    fh = tf.extractfile(info)  # a reader over the member's bytes: nothing is written to disk
    return fh.read() if fh is not None else b""


def _add(sample: Sample, tf: tarfile.TarFile, info: tarfile.TarInfo, ext: str, images: bool, labels: bool) -> None:
    """One member into its sample: the image (bytes read when `images`), or a label member (parsed when
    `labels`; with headers only its presence counts) unless a preferred one is already there."""
    if ext in IMAGE_EXTS:
        if sample.image is not None:
            raise DatasetError(f"{sample.where} has two images: {sample.image!r} and {info.name!r}")
        sample.image, sample.data = info.name, _member_bytes(tf, info) if images else None
        sample.offset, sample.size = info.offset_data, info.size
    elif ext in LABEL_EXTS:
        if sample.label_ext is not None and LABEL_EXTS.index(ext) >= LABEL_EXTS.index(sample.label_ext):
            return
        if info.size > MAX_LABEL_BYTES:
            raise DatasetError(f"{sample.where}: {ext!r} is {info.size} bytes; a label has at most "
                               f"{MAX_LABEL_BYTES}")
        label = _parse_label(_member_bytes(tf, info), ext, sample.where) if labels else None
        if not labels or label is not None:
            sample.label_ext, sample.label = ext, label


def iter_samples(shard: Shard, *, stream: bool = True, images: bool = True, labels: bool = True,
                 budget: list[int] | None = None) -> Iterator[Sample]:
    """Samples of one shard in tar order. stream: read it front to back (``r|*``, as the worker does); else
    ``r:*``: for an uncompressed shard tarfile reads the headers only and seeks past the data of members it is
    not asked for (registration). `budget`: a one-item list, the tar members still allowed over all shards."""
    budget = budget if budget is not None else [MAX_MEMBERS]
    try:
        with shard.path.open("rb") as fh, tarfile.open(fileobj=fh, mode="r|*" if stream else "r:*") as tf:
            current: Sample | None = None
            for info in tf:
                tf.members = []  # keep no TarInfo list (webdataset does the same)
                budget[0] -= 1
                if budget[0] < 0:
                    raise DatasetError(f"shard {shard.name!r}: more than {MAX_MEMBERS} tar members in all")
                _check_member(info, shard.name)
                key, ext = split_key(info.name) if info.isreg() else (None, None)
                if key is None:
                    continue
                if current is None or key != current.key:
                    if done := _finish(current):
                        yield done
                    current = Sample(shard.name, key)
                _add(current, tf, info, ext.lower(), images, labels)
            if done := _finish(current):
                yield done
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"shard {shard.name!r} is not a readable tar file: {e}") from None


def describe_shards(layout_root: Path, root: Path, max_samples: int) -> tuple[Any, ...]:
    """(n, classes, image_shape, counts, files, notes) for repscope.dataset_layouts.FolderLayout: counts are
    samples per shard. Cheap: tar headers only (members' data is seeked past, images never read), plus the
    label members when there is no classes.txt to give the classes (their range, 0..max)."""
    shards, names = list_shards(layout_root, root), read_classes(layout_root, root)
    counts, per_split, top, budget = {}, [0, 0], -1, [MAX_MEMBERS]
    for shard in shards:
        counts[shard.name] = 0
        for s in iter_samples(shard, stream=False, images=False, labels=names is None, budget=budget):
            counts[shard.name] += 1
            top = max(top, s.label if s.label is not None else -1)
            per_split[shard.split or 0] += 1
        if sum(counts.values()) > max_samples:
            raise DatasetError(f"shards hold more than {max_samples} samples")
    n = sum(counts.values())
    if n == 0:
        raise DatasetError("the shards hold no samples (an image and a label per key)")
    classes = names or label_classes(top)
    total = sum(s.bytes for s in shards)
    by_name = ", ".join(f"{k} {v}" for k, v in zip(SPLIT_NAMES, per_split, strict=True))
    split = (f"split from shard names: {by_name}" if shards[0].split is not None
             else "no train-/val-/test- shard names: the split is stratified")
    return n, classes, None, counts, [s.name for s in shards], [f"{len(shards)} shards, {total} bytes", split]


def label_classes(top: int) -> list[str]:
    """Class names '0'..'top' when only the labels give the classes."""
    if top >= MAX_CLASSES:
        raise DatasetError(f"label {top} implies more than {MAX_CLASSES} classes; add a {CLASSES_FILE}")
    return [str(i) for i in range(top + 1)]


def is_uncompressed(shard: Shard) -> bool:
    """A plain tar (members at fixed offsets, readable by seeking), not gzip / bzip2 / xz."""
    with shard.path.open("rb") as fh:
        head = fh.read(6)
    return not head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
