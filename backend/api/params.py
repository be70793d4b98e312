"""Typed path and query parameters shared by the routes."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Interval

# Ids, offsets and run filters end up as SQL integers: a value outside the signed 64-bit range can name no row
# and cannot even be bound by SQLite (OverflowError), so it is refused as a 422 naming the parameter.
SQL_INT_MIN, SQL_INT_MAX = -(2**63), 2**63 - 1
SqlInt = Annotated[int, Interval(ge=SQL_INT_MIN, le=SQL_INT_MAX)]
