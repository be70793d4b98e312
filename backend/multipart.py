"""Streaming multipart/form-data reader: the file part goes straight to the artifact store's temp area.

Starlette's form parser spools files into the system temp dir first; this one writes into the data dir while
hashing, enforces the byte limit as the body arrives, and keeps text fields small, so the API process never
holds a whole upload in memory and never writes it twice. A client that stops sending for the idle timeout
(REPSCOPE_UPLOAD_IDLE_TIMEOUT_S), or whose average rate is below REPSCOPE_UPLOAD_MIN_BYTES_PER_S at the end of
an idle-timeout window (a byte every 50 s never trips the idle timeout), gets a 408 and its partial file is
removed: no server holds a temp file and a connection open for a stalled upload. A text field or file name
holding a NUL is a 422 (PostgreSQL text cannot store one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from backend.limits import Pace
from backend.storage import ArtifactStore, IncomingFile, Received

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT_S = 60.0
DEFAULT_MIN_BYTES_PER_S = 1024.0


class MultipartError(ValueError):
    """The request body is not acceptable multipart form data; the message says why."""


class FieldHasNul(MultipartError):
    """A text field or the file name holds a NUL character (a 422: the form is well-formed, a value is not)."""


class UploadStalled(Exception):
    """No byte of the body arrived for the idle timeout, or the body arrives slower than the minimum rate."""


@dataclass
class UploadForm:
    fields: dict[str, str] = field(default_factory=dict)
    file: Received | None = None
    filename: str | None = None


class _Collector:
    """Parser callbacks that route each part to a text buffer or to the store."""

    def __init__(self, store: ArtifactStore, limit: int, file_field: str) -> None:
        self.store, self.limit, self.file_field = store, limit, file_field
        self.form = UploadForm()
        self.incoming: IncomingFile | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._text: bytearray | None = None

    # header callbacks
    def on_part_begin(self) -> None:
        self._headers, self._name, self._text = {}, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise MultipartError("each multipart part needs a Content-Disposition: form-data header with a name")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self._name != self.file_field:
                raise MultipartError(f"unexpected file field {self._name!r}; send the file as {self.file_field!r}")
            if self.incoming is not None:
                raise MultipartError(f"only one {self.file_field!r} part is accepted")
            if b"\x00" in options[b"filename"]:
                raise FieldHasNul(f"the file name of {self._name!r} contains a NUL character")
            self.form.filename = options[b"filename"].decode("utf-8", "replace")
            self.incoming = self.store.incoming(self.limit)
        else:
            if len(self.form.fields) >= MAX_FIELDS:
                raise MultipartError(f"too many form fields (at most {MAX_FIELDS})")
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._text is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise MultipartError(f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")
        elif self.incoming is not None:
            self.incoming.write(data[start:end])

    def on_part_end(self) -> None:
        if self._text is not None and self._name is not None:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise MultipartError(f"form field {self._name!r} is not valid UTF-8") from None
            if "\x00" in self.form.fields[self._name] or "\x00" in self._name:
                raise FieldHasNul(f"form field {self._name!r} contains a NUL character, which no value can hold")
            self._text = None

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data", "on_part_end")}


async def body_chunks(request: Request, idle_timeout_s: float,
                      min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S) -> AsyncIterator[bytes]:
    """request.stream() with a deadline on every receive and a minimum average rate: UploadStalled when the
    client goes quiet or trickles."""
    pace = Pace(idle_timeout_s, min_bytes_per_s)
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):  # no extra task per chunk, unlike wait_for
                message = await request.receive()
        except TimeoutError:
            raise UploadStalled(f"upload stalled: no data arrived for {idle_timeout_s:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message.get("body"):
            received += len(message["body"])
            yield message["body"]
        if not message.get("more_body", False):
            return
        slow = pace.too_slow(received)
        if slow is not None:
            raise UploadStalled(slow)


def _setting(request: Request, name: str, default: float) -> float:
    settings = getattr(request.app.state, "settings", None) if "app" in request.scope else None
    return getattr(settings, name, default)


async def receive_upload(request: Request, store: ArtifactStore, limit: int, file_field: str = "file",
                         idle_timeout_s: float | None = None) -> UploadForm:
    """Parse the body; on any error the partial file is removed before the exception propagates.
    `idle_timeout_s` default: the app's settings.upload_idle_timeout_s."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise MultipartError("expected a multipart/form-data body with a 'file' part")
    collector = _Collector(store, limit, file_field)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    timeout = idle_timeout_s if idle_timeout_s is not None else _setting(
        request, "upload_idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)
    min_rate = _setting(request, "upload_min_bytes_per_s", DEFAULT_MIN_BYTES_PER_S)
    try:
        async for chunk in body_chunks(request, timeout, min_rate):
            parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise MultipartError("multipart body ended before its closing boundary (truncated upload?)")
        if collector.incoming is not None:
            collector.form.file = collector.incoming.finish()
    except MultipartParseError as exc:
        if collector.incoming is not None:
            collector.incoming.discard()
        raise MultipartError(f"malformed multipart body: {exc}") from exc
    except BaseException:
        if collector.incoming is not None:
            collector.incoming.discard()
        raise
    return collector.form


async def receive_file_or_4xx(request: Request, store: ArtifactStore, limit: int) -> UploadForm:
    """receive_upload for a route: 413 past the size limit, 400 for a malformed body or a missing 'file', 422
    for a NUL in a field, 408 for a body that stalls or trickles (the connection is closed: the rest of the body
    is never read)."""
    from fastapi import HTTPException

    from backend.storage import UploadTooLarge

    try:
        form = await receive_upload(request, store, limit)
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except FieldHasNul as exc:
        raise HTTPException(422, str(exc)) from None
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from None
    except UploadStalled as exc:
        raise HTTPException(408, str(exc), headers={"Connection": "close"}) from None
    if form.file is None:
        raise HTTPException(400, "missing the 'file' part of the multipart form")
    return form
