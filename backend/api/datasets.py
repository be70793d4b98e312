from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from backend.api.deps import CanAdmin, CanRead, CanWrite, SessionDep, SettingsDep, StoreDep
from backend.api.openapi import FILE_RESPONSE
from backend.multipart import receive_file_or_4xx
from backend.services import datasets as service
from repscope.datasets import DATASET_NAME, DatasetError, DatasetLimits
from repscope.formats import ZipLimits
from repscope.schemas import DatasetFolderCreate, DatasetRead

router = APIRouter(tags=["datasets"], dependencies=[CanRead])

DATASET_FORM_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "name"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": ".npz with images (uint8 N x H x W x C), labels, optional split; or an "
                                "ImageFolder .zip (<class>/<image>)"},
        "name": {"type": "string", "pattern": DATASET_NAME.pattern, "description": "unique dataset name"},
        "description": {"type": "string"},
    }}}}}}


@router.get("/datasets", response_model=list[DatasetRead])
def list_datasets(session: SessionDep) -> list[DatasetRead]:
    return [DatasetRead.model_validate(d) for d in service.list_datasets(session)]


@router.get("/datasets/{name}", response_model=DatasetRead)
def get_dataset(name: str, session: SessionDep) -> DatasetRead:
    return DatasetRead.model_validate(service.get_dataset(session, name))


@router.get("/datasets/{name}/file", response_class=FileResponse, responses=FILE_RESPONSE)
def download_dataset(name: str, session: SessionDep, store: StoreDep) -> FileResponse:
    dataset = service.get_dataset(session, name)
    if dataset.storage_key is None:
        raise HTTPException(404, f"dataset {name!r} is {dataset.kind}: it has no uploaded file")
    return FileResponse(store.path(dataset.storage_key), media_type="application/octet-stream",
                        filename=f"{name}.{'npz' if dataset.format == 'npz' else 'zip'}")


def dataset_limits(settings) -> DatasetLimits:  # noqa: ANN001
    return DatasetLimits(max_images=settings.max_dataset_images, max_members=settings.max_zip_members,
                         max_expanded_bytes=settings.max_zip_expanded_bytes, npz=ZipLimits.from_settings(settings))


@router.post("/datasets", status_code=201, dependencies=[CanWrite], response_model=DatasetRead, openapi_extra=DATASET_FORM_SCHEMA,
             responses={409: {"description": "A dataset with that name exists"}})
async def upload_dataset(request: Request, session: SessionDep, store: StoreDep,
                         settings: SettingsDep) -> DatasetRead:
    """Upload a dataset (.npz or ImageFolder .zip), validated before it is stored."""
    form = await receive_file_or_4xx(request, store, settings.max_upload_bytes)
    try:
        dataset = await run_in_threadpool(
            service.register_upload, session, store, form.file, name=form.fields.get("name", "").strip(),
            filename=form.filename, description=form.fields.get("description"), limits=dataset_limits(settings))
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from None
    finally:
        form.file.path.unlink(missing_ok=True)
    return DatasetRead.model_validate(dataset)


@router.post("/datasets/folder", status_code=201, dependencies=[CanAdmin], response_model=DatasetRead,
             responses={409: {"description": "A dataset with that name exists"}})
def register_folder(body: DatasetFolderCreate, session: SessionDep, settings: SettingsDep) -> DatasetRead:
    """Register a dataset folder on the server's disk (under REPSCOPE_DATASET_ROOTS): an ImageFolder tree
    (`<class>/<image>`, optionally under `train/` and `val/`), DINOv2's ImageNet layout (`train/`, `val/`, `test/`,
    `labels.txt`), the CIFAR-10 / CIFAR-100 / STL-10 binary files (their Python pickles are refused), webdataset
    `.tar` shards (`<key>.jpg` + `<key>.cls`, read in order), or label lists (`train.txt` / `val.txt` lines
    `<path> <label>`). `classes` and `per_class` select from ImageFolder, DINOv2 and label-list folders."""
    try:
        dataset = service.register_folder(session, name=body.name, path=body.path,
                                          roots=settings.dataset_root_paths, description=body.description,
                                          classes=body.classes, per_class=body.per_class)
    except DatasetError as exc:
        raise HTTPException(422, str(exc)) from None
    return DatasetRead.model_validate(dataset)
