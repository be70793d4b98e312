"""Typed path and query parameters shared by the routes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Annotated

from annotated_types import Interval
from fastapi import Request
from fastapi.exceptions import RequestValidationError

# Ids, offsets and run filters end up as SQL integers. The primary keys are INTEGER columns, 32-bit on PostgreSQL
# (a larger bound parameter is "integer out of range" there, and SQLite cannot bind past 64 bits at all), so a
# value outside the signed 32-bit range can name no row and is refused as a 422 naming the parameter.
SQL_INT_MIN, SQL_INT_MAX = -(2**31), 2**31 - 1
SqlInt = Annotated[int, Interval(ge=SQL_INT_MIN, le=SQL_INT_MAX)]


def single_valued_query(prefix: str) -> Callable[[Request], None]:
    """Dependency for the routers mounted at `prefix`: a query parameter documented with one value and sent
    several times (`?by=a&by=b`) is a 422 naming it, not silently read as one of them; array parameters
    (`?metric=a&metric=b`) repeat as documented. The rule is read from the operation's OpenAPI entry."""

    def dependency(request: Request) -> None:
        counts = Counter(name for name, _ in request.query_params.multi_items())
        if all(n == 1 for n in counts.values()):
            return
        path = prefix + getattr(request.scope.get("route"), "path_format", "")
        method = "get" if request.method == "HEAD" else request.method.lower()
        op = request.app.openapi().get("paths", {}).get(path, {}).get(method, {})
        scalar = {p["name"] for p in op.get("parameters", [])
                  if p.get("in") == "query" and not _array(p.get("schema", {}))}
        errors = [{"type": "repeated_value", "loc": ("query", name), "input": request.query_params.getlist(name),
                   "msg": f"takes one value; it was given {n} times"}
                  for name, n in sorted(counts.items()) if n > 1 and name in scalar]
        if errors:
            raise RequestValidationError(errors)

    return dependency


def _array(schema: dict) -> bool:
    return schema.get("type") == "array" or any(_array(s) for s in schema.get("anyOf", []))
