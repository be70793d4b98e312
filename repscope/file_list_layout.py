"""A folder of images described by label lists: ``train.txt`` / ``val.txt`` (/ ``test.txt``), one
``<relative image path> <integer label>`` per line, as Places365, iNaturalist-style and many codebases' lists
are (a leading "/" is read as the folder's root); class names from ``classes.txt`` (one per line, in label
order) when present, else the labels themselves. Torch-free (the API registers such folders; the worker lists
them). Every path must stay inside the dataset root (links resolved by the callers)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from repscope.datasets import DatasetError

FORMAT = "filelist"
LIST_FILES = {"train.txt": 0, "val.txt": 1, "test.txt": 1}  # file -> split (0 train / 1 test)
CLASSES_FILE = "classes.txt"
MAX_LIST_BYTES = 512 << 20
MAX_CLASSES = 100_000


def list_format(folder: Path, files: set[str]) -> str | None:
    """FORMAT when the folder holds a label list whose first line reads as "<path> <int>", else None."""
    for name in LIST_FILES:
        if name in files:
            with open(folder / name, encoding="utf-8", errors="replace") as f:
                first = next((line for line in f if line.strip()), "")
            parts = first.strip().rsplit(maxsplit=1)
            return FORMAT if len(parts) == 2 and parts[1].lstrip("-").isdigit() else None
    return None


def _rel(path: str, where: str) -> str:
    p = PurePosixPath(path.replace("\\", "/").lstrip("/"))
    if not p.parts or ".." in p.parts:
        raise DatasetError(f"{where}: {path!r} is not a path inside the dataset folder")
    return p.as_posix()


def read_lists(folder: Path, max_files: int) -> tuple[list[tuple[str, int, int]], list[str]]:
    """([(relative path, split, label)], class names indexed by label) from the folder's label lists."""
    items: list[tuple[str, int, int]] = []
    for name, split in LIST_FILES.items():
        path = folder / name
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_LIST_BYTES:
            raise DatasetError(f"{name} is larger than {MAX_LIST_BYTES >> 20} MiB")
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.strip().rsplit(maxsplit=1)
                if len(parts) != 2 or not parts[1].isdigit():
                    raise DatasetError(f"{name} line {i}: expected '<image path> <label>', got {line.strip()[:80]!r}")
                items.append((_rel(parts[0], f"{name} line {i}"), split, int(parts[1])))
                if len(items) > max_files:
                    raise DatasetError(f"the label lists name more than {max_files} images")
    if not items:
        raise DatasetError("the label lists are empty")
    n_classes = max(label for _, _, label in items) + 1
    if n_classes > MAX_CLASSES:
        raise DatasetError(f"labels go up to {n_classes - 1}; at most {MAX_CLASSES} classes are accepted")
    names = [str(i) for i in range(n_classes)]
    if (folder / CLASSES_FILE).is_file():
        given = [s.strip() for s in (folder / CLASSES_FILE).read_text(encoding="utf-8").splitlines() if s.strip()]
        if len(given) < n_classes:
            raise DatasetError(f"{CLASSES_FILE} names {len(given)} classes but the labels go up to {n_classes - 1}")
        names = given
    seen: dict[str, int] = {}
    for n in names:  # distinct names: a repeated one gets its label appended
        seen[n] = seen.get(n, 0) + 1
    return items, [f"{n} ({i})" if seen[n] > 1 else n for i, n in enumerate(names)]
