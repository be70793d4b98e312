"""Datasets: the built-in catalogue, uploaded .npz / ImageFolder zips, and server-side folders."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import Dataset
from backend.services import Conflict, NotFound
from backend.storage import ArtifactStore, Received
from repscope.dataset_layouts import MAX_SCAN_FILES, describe_folder
from repscope.datasets import (
    BUILTIN_DATASETS,
    DatasetError,
    DatasetLimits,
    check_dataset_name,
    inspect_dataset,
)


def ensure_builtin_datasets(session: Session) -> None:
    """Register the generated datasets once (they are built by the worker, never downloaded)."""
    existing = set(session.scalars(select(Dataset.name).where(Dataset.name.in_(BUILTIN_DATASETS))))
    for spec in BUILTIN_DATASETS.values():
        if spec.name not in existing:
            session.add(Dataset(name=spec.name, kind="builtin", format="generated", n=spec.n,
                                image_shape=list(spec.image_shape) if spec.image_shape else None,
                                classes=list(spec.classes) or None, description=spec.description,
                                sha256=f"builtin:{spec.name}:v1", meta={}))
    try:
        session.commit()
    except IntegrityError:  # another API replica registered them first
        session.rollback()


def list_datasets(session: Session) -> list[Dataset]:
    return list(session.scalars(select(Dataset).order_by(Dataset.kind, Dataset.name)))


def get_dataset(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound(f"dataset {name!r} does not exist; see GET /api/v1/datasets")
    return dataset


def register_upload(session: Session, store: ArtifactStore, received: Received, *, name: str,
                    filename: str | None, description: str | None, limits: DatasetLimits) -> Dataset:
    """Validate an uploaded dataset file and commit it; the temp file is always consumed."""
    try:
        check_dataset_name(name)
        if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise Conflict(f"dataset {name!r} already exists; pick another name")
        info = inspect_dataset(received.path, filename, limits)
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise
    key, created = store.commit(received, "npz" if info.format == "npz" else "zip")
    try:
        dataset = Dataset(name=name, kind="upload", format=info.format, n=info.n, image_shape=info.image_shape,
                          classes=info.classes, sha256=received.sha256, storage_key=key, description=description,
                          meta={**info.to_meta(), "filename": filename, "bytes": received.size})
        session.add(dataset)
        session.commit()
    except BaseException:
        session.rollback()
        if created:
            store.delete(key)
        raise
    return dataset


SUBSET_FORMATS = ("folder", "dinov2-imagenet", "filelist")


def _subset(folder: Path, layout, classes: list[str]) -> list[str]:  # noqa: ANN001 - FolderLayout
    """The display names of a class subset; every entry must be a class folder name (an ImageNet wnid) or a
    class name of the folder."""
    dirs = {p.name for d in (folder, *(folder / s for s in ("train", "val"))) if d.is_dir()
            for p in d.iterdir() if p.is_dir()}
    known = dirs | set(layout.classes)
    unknown = sorted(set(classes) - known)
    if unknown:
        raise DatasetError(f"{len(unknown)} of the requested classes are not in the folder: {', '.join(unknown[:10])}")
    return sorted(set(classes))


def register_folder(session: Session, *, name: str, path: str, roots: list[Path], description: str | None,
                    max_files: int = MAX_SCAN_FILES, classes: list[str] | None = None,
                    per_class: int | None = None) -> Dataset:
    """A server-side folder under one of the configured roots (for datasets too large to upload): an ImageFolder
    tree, DINOv2's ImageNet layout, CIFAR-10/100 / STL-10 binaries or webdataset tar shards (format "webdataset",
    n and classes from the tar headers and classes.txt or the labels; repscope.dataset_layouts tells which)."""
    check_dataset_name(name)
    if not roots:
        raise DatasetError("server-side dataset folders are disabled: set REPSCOPE_DATASET_ROOTS")
    resolved = Path(path).resolve()
    root = next((r.resolve() for r in roots if resolved.is_relative_to(r.resolve())), None)
    if root is None:
        raise DatasetError(f"{path!r} is outside the configured dataset roots")
    if not resolved.is_dir():
        raise DatasetError(f"{path!r} is not a folder on the server")
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise Conflict(f"dataset {name!r} already exists; pick another name")
    layout = describe_folder(resolved, root, max_files)
    meta = {"path": str(resolved), **layout.to_meta()}
    n, names = layout.n, layout.classes
    if classes is not None or per_class is not None:
        if layout.format not in SUBSET_FORMATS:
            raise DatasetError(f"classes / per_class select from ImageFolder and DINOv2 folders; this one is "
                               f"{layout.format!r}")
        if classes is not None:
            names = _subset(resolved, layout, classes)
        meta.update({"subset": sorted(set(classes)) if classes is not None else None, "per_class": per_class})
        n = None  # counted when the worker lists the folder
    dataset = Dataset(name=name, kind="path", format=layout.format, n=n, image_shape=layout.image_shape,
                      classes=names, sha256=f"path:{resolved}", description=description, meta=meta)
    session.add(dataset)
    session.commit()
    return dataset
