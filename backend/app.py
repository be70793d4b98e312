"""The FastAPI application: REST API under /api/v1, HTML pages at /, static files at /static."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from backend import migrate
from backend.api import artifacts, datasets, evaluations, health, leaderboards, runs
from backend.db import make_engine, make_sessionmaker
from backend.pages import TEMPLATES
from backend.pages import router as pages_router
from backend.queue import TaskQueue
from backend.services import Conflict, NotFound
from backend.services.datasets import ensure_builtin_datasets
from backend.storage import ArtifactStore
from backend.sweeper import Sweeper
from repscope import __version__
from repscope.settings import Settings, get_settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "frontend" / "static"


def create_app(settings: Settings | None = None, *, run_sweeper: bool = True, auto_migrate: bool = True) -> FastAPI:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if auto_migrate:
            migrate.upgrade(settings.resolved_database_url)
        app.state.store.sweep_tmp()
        with app.state.sessionmaker() as session:
            ensure_builtin_datasets(session)
        sweeper = Sweeper(app.state.sessionmaker, app.state.queue, settings) if run_sweeper else None
        if sweeper:
            sweeper.start()
        yield
        if sweeper:
            sweeper.stop()
        app.state.engine.dispose()

    app = FastAPI(title="repscope", version=__version__, lifespan=lifespan,
                  description="Measure how good a learned representation is, while it trains.")
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.store = ArtifactStore(settings.data_dir / "artifacts")
    app.state.queue = TaskQueue(settings)

    for router in (health.router, runs.router, artifacts.router, evaluations.router, datasets.router, leaderboards.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=404)
        return TEMPLATES.TemplateResponse(request, "404.html", {"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """One readable sentence per problem, e.g. "body.name: String should have at least 1 character"."""
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request", "errors": _jsonable(exc.errors())},
                            status_code=422)


def _jsonable(errors: list[dict]) -> list[dict]:
    return [{k: (v if isinstance(v, str | int | float | list | type(None)) else str(v)) for k, v in e.items()
             if k != "ctx"} for e in errors]
