"""The OpenAPI schema's error responses and parameters, derived from the routes themselves; a 405's `Allow`.

Each operation documents the 4xx codes it can actually return, with one error model (`Error`), so clients and
schemathesis (`status_code_conformance`, `response_schema_conformance`) can hold the API to them:
401/403/429 where an auth dependency (`require_*`) guards it, 404 where the path names an object, 400 where it
has parameters (a path or query that is not UTF-8 or holds a NUL: backend.limits) or a body, 413 where it takes a
body, 408 where that body is a streamed multipart upload, 422 wherever it has parameters or a body.
Codes only a route knows about (409 from a service's Conflict, 410) are declared on the route with `responses=`;
this module gives them the error model and a description. Parameters lose FastAPI's `null` alternative: a
query string or path has no null (an optional parameter is one that is not required).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "title": "Error", "type": "object", "required": ["detail"],
        "description": "Every 4xx answer: `detail` says what was wrong in one sentence; a 422 from request "
                       "validation also lists each problem in `errors`.",
        "properties": {
            "detail": {"type": "string", "title": "Detail"},
            "errors": {"type": "array", "title": "Errors", "items": {"$ref": "#/components/schemas/ErrorItem"}},
        },
    },
    "ErrorItem": {
        "title": "ErrorItem", "type": "object", "required": ["loc", "msg", "type"],
        "description": "One request-validation problem: where (`loc`, e.g. [\"body\", \"name\"]), what, its kind.",
        "properties": {
            "loc": {"type": "array", "title": "Location", "items": {"anyOf": [{"type": "string"},
                                                                                {"type": "integer"}]}},
            "msg": {"type": "string", "title": "Message"},
            "type": {"type": "string", "title": "Error Type"},
        },
    },
}
ALLOW_PROBES = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")  # replaced by Error / ErrorItem

# Default descriptions; a route's own `responses={code: {"description": ...}}` wins.
DESCRIPTIONS = {
    400: "Malformed request: the body is not well-formed UTF-8 JSON, the path, query or body is not UTF-8 or holds "
         "a NUL character, or a header is malformed",
    401: "No credentials, or a malformed, unknown or revoked API token",
    403: "The token lacks the scope this operation needs (or a browser request lacks its CSRF token)",
    404: "The object the path names does not exist",
    408: "The upload stalled: no bytes arrived within the idle timeout",
    409: "The request conflicts with the object's current state",
    410: "The object exists but its stored file is gone",
    413: "The request body is over its size limit",
    422: "Invalid parameters or body; `errors` lists each problem found by request validation",
    429: "Over the per-token rate limit; retry after `Retry-After` seconds",
}
MULTIPART_400 = ("Malformed multipart body, no `file` part, a path or query that is not UTF-8 or holds a NUL, or "
                 "a malformed header")
FILE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"description": "The stored file, byte for byte",
                                                        "content": {"application/octet-stream": {
                                                            "schema": {"type": "string", "format": "binary"}}}}}
HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "description": "`Bearer`: send an API token",
                               "schema": {"type": "string", "enum": ["Bearer"]}}},
    429: {"Retry-After": {"required": True, "description": "seconds until the next request may go ahead",
                          "schema": {"type": "integer", "minimum": 1}}},
}


def auth_dependencies(route: APIRoute) -> list[str]:
    """Names of the `require_*` dependencies guarding a route (its router's and its own, nested ones too)."""

    def walk(dependant) -> Iterator[str]:  # noqa: ANN001
        for sub in dependant.dependencies:
            name = getattr(sub.call, "__name__", "")
            if name.startswith("require_"):
                yield name
            yield from walk(sub)

    return list(walk(route.dependant))


def derived_codes(op: dict[str, Any], *, guarded: bool) -> dict[int, str]:
    """The 4xx codes an operation can return by its shape, each with its default description."""
    codes: list[int] = []
    params = op.get("parameters", [])
    body = op.get("requestBody", {}).get("content", {})
    if guarded:
        codes += [401, 403, 429]
    if any(p.get("in") == "path" for p in params):
        codes.append(404)
    if params or body:
        codes.append(400)
    if body:
        codes.append(413)
    if "multipart/form-data" in body:
        codes.append(408)
    if params or body:
        codes.append(422)
    out = {code: DESCRIPTIONS[code] for code in codes}
    if "multipart/form-data" in body:
        out[400] = MULTIPART_400
    return out


def document_errors(schema: dict[str, Any], routes: Iterable[tuple[str, APIRoute]]) -> None:
    """Add the error model and each operation's 4xx responses to `schema` (in place).

    `routes` are (full path prefix, route) pairs; operations without a route here are left alone.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(ERROR_SCHEMAS)
    paths = schema.get("paths", {})
    for prefix, route in routes:
        item = paths.get(prefix + route.path_format, {})
        guarded = bool(auth_dependencies(route))
        for method in route.methods or ():
            op = item.get(method.lower())
            if op is not None:
                _document_operation(op, derived_codes(op, guarded=guarded))
    for name in FASTAPI_ERROR_SCHEMAS:
        if name in components and f"#/components/schemas/{name}" not in str(schema):
            del components[name]


def _document_operation(op: dict[str, Any], derived: dict[int, str]) -> None:
    responses = op.setdefault("responses", {})
    for code, description in derived.items():
        responses.setdefault(str(code), {"description": description})
    for code, response in list(responses.items()):
        if not code.isdigit() or not 400 <= int(code) < 500:
            continue
        if response.get("description") in (None, "", "Validation Error", "Additional Response"):
            response["description"] = DESCRIPTIONS.get(int(code), "Client error")
        response["content"] = {"application/json": {"schema": ERROR_REF}}
        if int(code) in HEADERS:
            response.setdefault("headers", {}).update(HEADERS[int(code)])
    op["responses"] = dict(sorted(responses.items(), key=lambda kv: (not kv[0].isdigit(), kv[0])))


def allowed_methods(routes: Iterable[BaseRoute], scope: dict[str, Any]) -> list[str]:
    """The methods some route fully matches for this request's path: the `Allow` header of a 405."""
    found = []
    for method in ALLOW_PROBES:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            found.append(method)
    return found


def document_parameters(schema: dict[str, Any]) -> None:
    """Drop `{"type": "null"}` from path, query and header parameter schemas (in place)."""
    for item in schema.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                param["schema"] = _without_null(param.get("schema", {}))


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    options = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if "anyOf" not in schema or len(options) == len(schema["anyOf"]):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**options[0], **rest} if len(options) == 1 else {**rest, "anyOf": options}
