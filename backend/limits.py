"""Request-body limits for everything that is not a streamed upload (JSON bodies, forms).

Uploads (artifacts, datasets) stream through backend.multipart with REPSCOPE_MAX_UPLOAD_BYTES. Any other
body is counted as it arrives and refused with 413 as soon as it passes its limit (a declared
Content-Length over the limit is refused before a byte is read): REPSCOPE_MAX_RESULT_BYTES for a worker's
result (it carries figure data), REPSCOPE_MAX_JSON_BYTES for the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

STREAMED_UPLOADS = (re.compile(r"^/api/v1/runs/[^/]+/artifacts/?$"), re.compile(r"^/api/v1/datasets/?$"))
RESULT_PATH = re.compile(r"^/api/v1/evaluations/[^/]+/result/?$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyLimitMiddleware:
    def __init__(self, app: Callable, *, max_json_bytes: int, max_result_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_result_bytes = max_result_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
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
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await _too_large(send, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        buffered = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

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
    body = json.dumps({"detail": f"request body too large: the limit is {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
