"""The FastAPI application: REST API under /api/v1, HTML pages at /, static files at /static."""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from backend import migrate
from backend.api import artifacts, datasets, evaluations, health, leaderboards, runs, tokens
from backend.api.openapi import allowed_methods, document_errors, document_parameters
from backend.api.params import single_valued_query
from backend.db import make_engine, make_sessionmaker, secure_data_dir
from backend.docs_ui import install as install_docs
from backend.headers import SecurityHeadersMiddleware
from backend.limits import BodyLimitMiddleware
from backend.pages import ROUTERS as PAGE_ROUTERS
from backend.pages.auth import LoginRequired, login_redirect
from backend.pages.templates import make_templates, render
from backend.queue import TaskQueue
from backend.security import RateLimiter, load_secret_key
from backend.services import Conflict, NotFound
from backend.services.datasets import ensure_builtin_datasets
from backend.services.tokens import ensure_token
from backend.storage import ArtifactStore
from backend.sweeper import Sweeper
from repscope import __version__
from repscope.settings import Settings, get_settings

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
API_ROUTERS = (health.router, runs.router, artifacts.router, evaluations.router, datasets.router,
               leaderboards.router, tokens.router)
STATIC_DIR = Path(__file__).resolve().parent.parent / "frontend" / "static"


def create_app(settings: Settings | None = None, *, run_sweeper: bool = True, auto_migrate: bool = True) -> FastAPI:
    settings = settings or get_settings()
    secure_data_dir(settings)  # 0700 data dir, 0600 database and secrets (tightened, with a log line, if looser)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if auto_migrate:
            migrate.upgrade(settings.resolved_database_url)
        app.state.store.sweep_tmp()
        with app.state.sessionmaker() as session:
            ensure_builtin_datasets(session)
        bootstrap_tokens(app.state.sessionmaker, settings)
        sweeper = Sweeper(app.state.sessionmaker, app.state.queue, settings) if run_sweeper else None
        if sweeper:
            sweeper.start()
        yield
        if sweeper:
            sweeper.stop()
        app.state.engine.dispose()

    app = FastAPI(title="repscope", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Measure how good a learned representation is, while it trains.")
    install_docs(app)  # /docs and /redoc with Swagger UI / ReDoc from the installed package, not a CDN
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.store = ArtifactStore(settings.data_dir / "artifacts")
    app.state.queue = TaskQueue(settings)
    app.state.secret_key = load_secret_key(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.state.templates = make_templates()  # the pages' Jinja2 environment (backend.pages.templates.render)

    for router in API_ROUTERS:
        app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(single_valued_query(API_PREFIX))])
    for router in PAGE_ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _install_error_handlers(app)
    _document_auth(app)
    app.add_middleware(BodyLimitMiddleware, max_json_bytes=settings.max_json_bytes,
                       max_result_bytes=settings.max_result_bytes, max_json_depth=settings.max_json_depth,
                       idle_timeout_s=settings.upload_idle_timeout_s, min_bytes_per_s=settings.upload_min_bytes_per_s)
    app.add_middleware(SecurityHeadersMiddleware)  # last: outermost, so every response gets the headers
    return app


def _document_auth(app: FastAPI) -> None:
    """Declare the bearer token in the OpenAPI schema (/docs gets an Authorize button); /health needs none."""
    base = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerToken"] = {
            "type": "http", "scheme": "bearer",
            "description": "An API token (`repscope token create`). Scopes: read, write, worker, admin."}
        schema["security"] = [{"bearerToken": []}]
        for router in API_ROUTERS:
            for route in router.routes:
                scope = _required_scope([*router.dependencies, *getattr(route, "dependencies", [])])
                item = schema.get("paths", {}).get(API_PREFIX + getattr(route, "path_format", ""), {})
                for method in getattr(route, "methods", ()) or ():
                    op = item.get(method.lower())
                    if op is not None and scope:
                        op["x-required-scope"] = scope
                        if scope == "read" and app.state.settings.public_read:  # anonymous reads allowed
                            op["security"] = [{}, {"bearerToken": []}]
                        op["description"] = (op.get("description", "") + f"\n\nNeeds a token with scope `{scope}`"
                                             + (" (or none when the instance is public-read)." if scope == "read"
                                                else ".")).strip()
        for path, item in schema.get("paths", {}).items():
            if path.endswith("/health") or path.endswith("/whoami"):
                for op in item.values():
                    op["security"] = [{}, {"bearerToken": []}] if path.endswith("/whoami") else []
        document_errors(schema, [(API_PREFIX, route) for router in API_ROUTERS for route in router.routes
                                 if isinstance(route, APIRoute)])
        document_parameters(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _required_scope(depends: list) -> str | None:
    """The scope auth dependencies ask for: a route's own (write, worker...) over its router's read."""
    found = [getattr(d.dependency, "__name__", "").removeprefix("require_").replace("_or_", " or ")
             for d in depends if getattr(d.dependency, "__name__", "").startswith("require_")]
    return next((s for s in reversed(found) if s != "read"), found[0] if found else None)


def bootstrap_tokens(sessionmaker, settings: Settings) -> None:  # noqa: ANN001
    """Tokens whose secrets come from the environment (REPSCOPE_ADMIN_TOKEN, REPSCOPE_WORKER_TOKEN)."""
    from sqlalchemy.exc import IntegrityError

    for name, secret, scope in (("bootstrap-admin", settings.admin_token, "admin"),
                                ("bootstrap-worker", settings.worker_token, "worker")):
        if not secret:
            continue
        for attempt in range(3):  # API replicas starting together race on the unique name
            with sessionmaker() as session:
                try:
                    ensure_token(session, name, secret, [scope])
                    break
                except IntegrityError:
                    session.rollback()
                    if attempt == 2:
                        raise


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: HTTPException) -> Response:
        """`Allow` names every method the URL takes (the router names only the first route it tried)."""
        allowed = ", ".join(allowed_methods(app.router.routes, request.scope))
        return JSONResponse({"detail": exc.detail}, status_code=405,
                            headers={"Allow": allowed or (exc.headers or {}).get("Allow", "")})

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=404)
        return render(request, "404.html", {"detail": str(exc)}, status_code=404)

    @app.exception_handler(LoginRequired)
    async def login_required(_: Request, exc: LoginRequired) -> Response:
        return login_redirect(exc)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """One readable sentence per problem, e.g. "body.name: String should have at least 1 character"."""
        parts = []
        for err in exc.errors():
            where = ".".join(_text(str(p)) for p in err.get("loc", ()))
            parts.append(f"{where}: {_text(str(err.get('msg', 'invalid')))}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request", "errors": _jsonable(exc.errors())},
                            status_code=422)


def _jsonable(errors: list[dict]) -> list[dict]:
    """Pydantic's error dicts as the documented ErrorItem: `loc` a list (pydantic gives a tuple), no `ctx`, and
    whatever they echo made encodable (a lone surrogate or a NaN in `input` made this handler itself a 500)."""
    return [{k: _echo(v if isinstance(v, str | int | float | list | tuple | type(None)) else str(v))
             for k, v in e.items() if k != "ctx"} for e in errors]


def _echo(value: object) -> object:
    """`value` as strict JSON can carry it: strings valid UTF-8, no NaN/Infinity, containers walked."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bool | int | float | type(None)):
        return value
    if isinstance(value, list | tuple):
        return [_echo(v) for v in value]
    if isinstance(value, dict):
        return {_text(str(k)): _echo(v) for k, v in value.items()}
    return _text(str(value))


def _text(value: str) -> str:
    """`value` with lone surrogates spelled as \\udXXX escapes, so it encodes as UTF-8."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
