"""Request-body limits for everything that is not a streamed upload (JSON bodies, forms).

Uploads (artifacts, datasets) stream through backend.multipart with REPSCOPE_MAX_UPLOAD_BYTES. Any other
body is counted as it arrives and refused with 413 as soon as it passes its limit (a declared
Content-Length over the limit is refused before a byte is read): REPSCOPE_MAX_RESULT_BYTES for a worker's
result (it carries figure data), REPSCOPE_MAX_JSON_BYTES for the rest. Slow bodies are answered 408: one that
sends nothing for REPSCOPE_UPLOAD_IDLE_TIMEOUT_S, a JSON body (at most 1 MiB) that has not arrived whole within
that time (else a client sending a byte now and then holds it open for ever), and a worker's result or an
upload (backend.multipart) whose average rate falls below REPSCOPE_UPLOAD_MIN_BYTES_PER_S, checked once per
idle-timeout window.

A JSON body is then checked on its bytes, before any parser recurses into it: nesting deeper than
REPSCOPE_MAX_JSON_DEPTH is a 422 (a deeper value, once stored, breaks every listing that serializes it). A 400
for bytes that are not UTF-8 (RFC 8259 §8.1: json.loads would auto-detect UTF-16/32, where the escape scan
below cannot see), a \\uD800-style escape without its pair (Python's json accepts lone surrogates;
the database driver and the response encoder then fail on them) and a NUL, raw or \\u0000 (PostgreSQL text
cannot hold one). Once these pass, no decoded string can hold a surrogate or a NUL. A URL's path or query, or a
urlencoded form, that is not UTF-8 or holds a NUL once percent-decoded is a 400 as well.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import re
import time
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
                 idle_timeout_s: float = 60.0, min_bytes_per_s: float = 1024.0) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_result_bytes = max_result_bytes
        self.max_json_depth = max_json_depth
        self.idle_timeout_s = idle_timeout_s
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogatepass")
        for part, raw in (("path", raw_path), ("query string", scope.get("query_string", b""))):
            problem = _url_text_problem(raw)
            if problem is not None:
                return await _reply(send, 400, f"the URL's {part} {problem}")
        if scope["method"] not in BODY_METHODS:
            return await self.app(scope, receive, send)
        path = scope["path"]
        if scope["method"] == "POST" and any(p.match(path) for p in STREAMED_UPLOADS):
            return await self.app(scope, receive, send)
        is_result = RESULT_PATH.match(path) is not None
        limit = self.max_result_bytes if is_result else self.max_json_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _too_large(send, limit)
        idle = self.idle_timeout_s
        # A result may be large: it must keep up a minimum rate. Any other body is small: it must arrive whole.
        pace = Pace(idle, self.min_bytes_per_s) if is_result else None
        deadline = time.monotonic() + idle
        chunks: list[bytes] = []
        size = 0
        while True:
            wait = idle if pace else min(idle, deadline - time.monotonic())
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                if len(chunks) <= 1:  # nothing came after the first batch: a stall, not a trickle
                    return await _reply(send, 408, f"request body stalled: nothing arrived for {idle:g} s")
                return await _reply(send, 408, f"request body too slow: a JSON body must arrive whole within "
                                               f"{idle:g} s (REPSCOPE_UPLOAD_IDLE_TIMEOUT_S); {size} bytes came")
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await _too_large(send, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
            slow = pace.too_slow(size) if pace else None
            if slow is not None:
                return await _reply(send, 408, slow)
        body = b"".join(chunks)
        kind = _body_kind(scope)
        if kind == "json":
            problem = check_json_bytes(body, self.max_json_depth)
            if problem is not None:
                return await _reply(send, *problem)
        elif kind == "form":
            problem = _url_text_problem(body)
            if problem is not None:
                return await _reply(send, 400, f"the form body {problem}")
        buffered = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return buffered.pop() if buffered else await receive()

        return await self.app(scope, replay, send)


class Pace:
    """A body's average rate, checked once per window from the end of the first one: a client sending a byte
    just inside every idle timeout would otherwise hold a connection (and a temp file) for as long as it liked."""

    def __init__(self, window_s: float, min_bytes_per_s: float) -> None:
        self.window_s, self.min_bytes_per_s = window_s, min_bytes_per_s
        self.started = time.monotonic()
        self.next_check = self.started + window_s

    def too_slow(self, received: int) -> str | None:
        """The 408 message when `received` bytes so far are below the rate at a window's end, else None."""
        now = time.monotonic()
        if now < self.next_check or self.min_bytes_per_s <= 0:
            return None
        self.next_check = now + self.window_s
        elapsed = now - self.started
        if received >= self.min_bytes_per_s * elapsed:
            return None
        return (f"upload too slow: {received} bytes in {elapsed:.0f} s, under the minimum of "
                f"{self.min_bytes_per_s:g} bytes/s (REPSCOPE_UPLOAD_MIN_BYTES_PER_S)")


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

_FORM_TYPE = b"application/x-www-form-urlencoded"
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal, escapes included
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", bytes([1, 1, 255, 255]))  # +1 / -1 as int8
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.S)
_NUL_ESCAPE = re.compile(rb"\\u0000")
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32-BE"), (b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\xef\xbb\xbf", "UTF-8"),
         (b"\xfe\xff", "UTF-16-BE"), (b"\xff\xfe", "UTF-16-LE"))
UTF8_ONLY = "JSON bodies must be UTF-8 (RFC 8259 §8.1)"


def _body_kind(scope: Scope) -> str | None:
    """"json" exactly when FastAPI would parse the body as JSON (its own test, copied: no Content-Type, or
    application/json or application/<anything>+json), "form" for what backend.pages.auth reads as a urlencoded form,
    else None (multipart parts are checked by backend.multipart)."""
    value = next((v for n, v in scope.get("headers", ()) if n == b"content-type"), b"")
    if not value:
        return "json"
    if value.lstrip().lower().startswith(_FORM_TYPE):
        return "form"
    message = email.message.Message()
    message["content-type"] = value.decode("latin-1")
    subtype = message.get_content_subtype()
    if message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
        return "json"
    return None


def _url_text_problem(raw: bytes) -> str | None:
    """What is wrong with URL-encoded text once percent-decoded, else None: bytes that are not strict UTF-8
    (Starlette would silently replace them with U+FFFD, so a name or search term would not be what the client
    sent), or a NUL (PostgreSQL text cannot hold one: every query using it was a 500)."""
    if raw.isascii() and b"%" not in raw and b"\x00" not in raw:
        return None
    decoded = unquote_to_bytes(raw.replace(b"+", b" "))
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8 once percent-decoded"
    if b"\x00" in decoded:
        return "contains a NUL character (%00), which no name or text field can hold"
    return None


def _encoding_problem(body: bytes) -> str | None:
    """Why `body` is not UTF-8 JSON text, else None. json.loads(bytes) would guess UTF-16/32 from a BOM or from
    the NUL bytes of ASCII text in those encodings, and the escape checks below only read UTF-8."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return f"{UTF8_ONLY}, without a byte order mark; this body starts with a {name} one"
    if b"\x00" in body:
        guess = json.detect_encoding(body)
        if guess != "utf-8":
            return f"{UTF8_ONLY}; this body looks like {guess.upper()}"
        return f"{UTF8_ONLY} text: this body has a raw NUL byte at byte {body.index(0)}"
    if not body.isascii():
        try:
            body.decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates, which json.loads lets through
        except UnicodeDecodeError as exc:
            return f"request body is not valid UTF-8 (at byte {exc.start}); {UTF8_ONLY}"
    return None


def check_json_bytes(body: bytes, max_depth: int) -> tuple[int, str] | None:
    """(status, detail) for a JSON body that must not reach the parser, else None. Linear, no recursion."""
    problem = _encoding_problem(body)
    if problem is not None:
        return 400, problem
    if body.count(b"[") + body.count(b"{") > max_depth:  # else it cannot nest deeper: skip the scan
        depth = json_bytes_depth(body)
        if depth > max_depth:
            return 422, (f"JSON body nests {depth} levels deep; at most {max_depth} are accepted "
                         "(REPSCOPE_MAX_JSON_DEPTH)")
    at = lone_surrogate(body)
    if at is not None:
        return 400, (f"JSON body has an unpaired UTF-16 surrogate escape at byte {at} "
                     f"({body[at:at + 6].decode('ascii', 'replace')}); strings must be valid Unicode")
    at = nul_escape(body)
    if at is not None:
        return 400, (f"JSON body has a NUL character (\\u0000) at byte {at}; no name or text field can hold one "
                     "(PostgreSQL text cannot)")
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


def nul_escape(body: bytes) -> int | None:
    """Byte offset of a \\u0000 escape (not an escaped backslash followed by "u0000"), else None."""
    if not _NUL_ESCAPE.search(body):
        return None
    for m in _ESCAPE.finditer(body):
        if m.group(1) == b"0000":
            return m.start()
    return None


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
