"""Request-body limits for everything that is not a streamed upload (JSON bodies, forms).

Uploads (artifacts, datasets) stream through backend.multipart with REPSCOPE_MAX_UPLOAD_BYTES. Any other
body is counted as it arrives and refused with 413 as soon as it passes its limit (a declared
Content-Length over the limit is refused before a byte is read): REPSCOPE_MAX_RESULT_BYTES for a worker's
result (it carries figure data), REPSCOPE_MAX_JSON_BYTES for the rest. A body that stalls for
REPSCOPE_UPLOAD_IDLE_TIMEOUT_S is answered 408.

A JSON body is then checked on its bytes, before any parser recurses into it: nesting deeper than
REPSCOPE_MAX_JSON_DEPTH is a 422 (a 400-level config was stored and then broke every listing that serialized
it), and bytes that are not UTF-8 or a \\uD800-style escape without its pair are a 400 (Python's json accepts
lone surrogates; the database driver and the response encoder then fail on them). A URL's path or query, or a
urlencoded form, that is not UTF-8 once percent-decoded is a 400 as well.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import numpy as np

STREAMED_UPLOADS = (re.compile(r"^/api/v1/runs/[^/]+/artifacts/?$"), re.compile(r"^/api/v1/datasets/?$"))
RESULT_PATH = re.compile(r"^/api/v1/evaluations/[^/]+/result/?$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyLimitMiddleware:
    def __init__(self, app: Callable, *, max_json_bytes: int, max_result_bytes: int, max_json_depth: int = 64,
                 idle_timeout_s: float = 60.0) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_result_bytes = max_result_bytes
        self.max_json_depth = max_json_depth
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for part, raw in (("path", scope.get("raw_path") or b""), ("query string", scope.get("query_string", b""))):
            if not _utf8_once_decoded(raw):
                return await _reply(send, 400, f"the URL's {part} is not valid UTF-8 once percent-decoded")
        if scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        path = scope["path"]
        if scope["method"] == "POST" and any(p.match(path) for p in STREAMED_UPLOADS):
            return await self.app(scope, receive, send)
        limit = self.max_result_bytes if RESULT_PATH.match(path) else self.max_json_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _too_large(send, limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                return await _reply(send, 408, f"request body stalled: nothing arrived for {self.idle_timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await _too_large(send, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        kind = _body_kind(scope)
        if kind == "json":
            problem = check_json_bytes(body, self.max_json_depth)
            if problem is not None:
                return await _reply(send, *problem)
        elif kind == "form" and not _utf8_once_decoded(body):
            return await _reply(send, 400, "the form body is not valid UTF-8 once percent-decoded")
        buffered = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return buffered.pop() if buffered else await receive()

        return await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    await _reply(send, 413, f"request body too large: the limit is {limit} bytes")


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# --- JSON on the wire -------------------------------------------------------------------------------------

_JSON_TYPE = re.compile(rb"^application/([a-z0-9.+-]*\+)?json\s*(;|$)", re.I)
_FORM_TYPE = re.compile(rb"^application/x-www-form-urlencoded\s*(;|$)", re.I)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal, escapes included
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))  # +1 / -1 as int8
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.S)


def _body_kind(scope: Scope) -> str | None:
    """"json" when FastAPI would parse the body as JSON (it says so, or says nothing), "form" for a urlencoded
    form, else None (multipart parts are checked by backend.multipart)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            value = value.strip()
            return "json" if _JSON_TYPE.match(value) else "form" if _FORM_TYPE.match(value) else None
    return "json"


def _utf8_once_decoded(raw: bytes) -> bool:
    """Whether URL-encoded text decodes as strict UTF-8: Starlette would silently replace bad bytes with U+FFFD,
    so a name or search term would not be what the client sent."""
    if raw.isascii() and b"%" not in raw:
        return True
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_json_bytes(body: bytes, max_depth: int) -> tuple[int, str] | None:
    """(status, detail) for a JSON body that must not reach the parser, else None. Linear, no recursion."""
    if not body.isascii():
        try:
            body.decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates, which json.loads lets through
        except UnicodeDecodeError as exc:
            return 400, f"request body is not valid UTF-8 (at byte {exc.start}); JSON must be UTF-8 encoded"
    if body.count(b"[") + body.count(b"{") > max_depth:  # else it cannot nest deeper: skip the scan
        depth = json_bytes_depth(body)
        if depth > max_depth:
            return 422, (f"JSON body nests {depth} levels deep; at most {max_depth} are accepted "
                         "(REPSCOPE_MAX_JSON_DEPTH)")
    at = lone_surrogate(body)
    if at is not None:
        return 400, (f"JSON body has an unpaired UTF-16 surrogate escape at byte {at} "
                     f"({body[at:at + 6].decode('ascii', 'replace')}); strings must be valid Unicode")
    return None


def json_bytes_depth(body: bytes) -> int:
    """Deepest [ / { nesting outside string literals (an upper bound for malformed input)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET).translate(_STEP)
    if not brackets:
        return 0
    return int(np.frombuffer(brackets, dtype=np.int8).cumsum(dtype=np.int64).max())


def lone_surrogate(body: bytes) -> int | None:
    """Byte offset of a \\uD800-\\uDFFF escape that is not half of a high+low pair, else None."""
    if not _MAYBE_SURROGATE.search(body):
        return None
    high: re.Match | None = None  # a high surrogate waiting for its low half, right after it
    for m in _ESCAPE.finditer(body):  # left to right, so an escaped backslash (\\\\) is consumed as a pair
        code = int(m.group(1), 16) if m.group(1) else None
        if high is not None:
            if code is not None and 0xDC00 <= code <= 0xDFFF and m.start() == high.end():
                high = None
                continue
            return high.start()
        if code is not None and 0xD800 <= code <= 0xDBFF:
            high = m
        elif code is not None and 0xDC00 <= code <= 0xDFFF:
            return m.start()
    return high.start() if high is not None else None


# --- JSON read back -----------------------------------------------------------------------------------------

def clip_json(value: Any, max_depth: int, marker: str) -> Any:
    """`value` with every container deeper than `max_depth` replaced by `marker`: rows stored before the
    depth limit existed still list and render (serializers give up at a few hundred levels)."""
    if max_depth <= 0:
        return marker if isinstance(value, dict | list) else value
    if isinstance(value, dict):
        return {k: clip_json(v, max_depth - 1, marker) for k, v in value.items()}
    if isinstance(value, list):
        return [clip_json(v, max_depth - 1, marker) for v in value]
    return value
