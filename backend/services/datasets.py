"""Datasets: the built-in catalogue, uploaded .npz / ImageFolder zips, and server-side folders."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.models import Dataset
from backend.services import Conflict, NotFound
from backend.storage import ArtifactStore, Received
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


def register_folder(session: Session, *, name: str, path: str, roots: list[Path],
                    description: str | None) -> Dataset:
    """A server-side ImageFolder under one of the configured roots (for datasets too large to upload)."""
    check_dataset_name(name)
    if not roots:
        raise DatasetError("server-side dataset folders are disabled: set REPSCOPE_DATASET_ROOTS")
    resolved = Path(path).resolve()
    if not any(resolved == r.resolve() or r.resolve() in resolved.parents for r in roots):
        raise DatasetError(f"{path!r} is outside the configured dataset roots")
    if not resolved.is_dir():
        raise DatasetError(f"{path!r} is not a folder on the server")
    classes = sorted(p.name for p in resolved.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{path!r} holds no class folders (expected <class>/<image>)")
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise Conflict(f"dataset {name!r} already exists; pick another name")
    dataset = Dataset(name=name, kind="path", format="folder", n=None, classes=classes,
                      sha256=f"path:{resolved}", description=description, meta={"path": str(resolved)})
    session.add(dataset)
    session.commit()
    return dataset
