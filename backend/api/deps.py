"""FastAPI dependencies: database session, artifact store, task queue, settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from backend.queue import TaskQueue
from backend.security import Principal, authorize
from backend.storage import ArtifactStore
from repscope.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_queue(request: Request) -> TaskQueue:
    return request.app.state.queue


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def require(scope: str, *also: str):  # noqa: ANN201
    """Dependency: the caller must hold `scope` (or one of `also`); see backend.security.authorize."""

    def dependency(request: Request, session: SessionDep) -> Principal:
        return authorize(request, session, scope, also=also)

    dependency.__name__ = "require_" + "_or_".join((scope, *also))  # read by backend.app for the API docs
    return dependency


CanRead = Depends(require("read"))
CanWrite = Depends(require("write"))
CanWork = Depends(require("worker"))
CanAdmin = Depends(require("admin"))
CanUpload = Depends(require("write", "worker"))  # workers: derived embeddings only (api.artifacts._check_scope)
