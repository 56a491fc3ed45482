"""What the request path reads and answers with, whichever server the request came through.

`FrontRequest` is a request to a hot endpoint; `Reply` (complete JSON) and `StreamReply`
(SSE, written as it is produced) are the answers. `Conn` is where a stream goes: the raw
front door's connection (`front.py`) or an aiohttp response (`AiohttpConn`, for requests
the front door handed to the aiohttp app), so the request path is written once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from thrifty.proxy.http.errors import ApiError


class Conn(Protocol):
    """Where a streamed answer goes: the raw connection, or an aiohttp response."""

    async def start_stream(self, status: int, headers: dict[str, str]) -> None: ...
    async def write_chunk(self, data: bytes) -> None: ...
    async def end_stream(self) -> None: ...
    async def read_body(self) -> bytes: ...


class FrontRequest:
    """One request as the request path sees it; header names are lower-case."""

    __slots__ = ("method", "path", "headers", "content_length", "body", "conn", "tenant", "lane")

    def __init__(self, method: str, path: str, headers: dict[str, str], content_length: int | None,
                 body: bytes | None, conn: Conn, *, tenant: str | None = None, lane: str | None = None) -> None:
        self.method = method
        # set only by internal callers (the batch runner), never from the wire:
        self.tenant = tenant  # the tenant the request belongs to (instead of its headers)
        self.lane = lane  # the admission lane (instead of `service_tier`)
        self.path = path
        self.headers = headers
        self.content_length = content_length
        self.body = body  # None: not read yet (`conn.read_body()` reads it)
        self.conn = conn

    @property
    def content_type(self) -> str:
        """The media type without parameters, as aiohttp reports it."""
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        if self.body is None:
            self.body = await self.conn.read_body()
        return self.body


class Reply:
    """A complete answer; `thrifty_body` carries the parsed answer to the cache."""

    __slots__ = ("status", "body", "headers", "thrifty_body", "thrifty_error")

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.thrifty_body: Any = None
        self.thrifty_error: ApiError | None = None


def json_reply(obj: object, *, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def error_reply(exc: ApiError, request_id: str | None = None) -> Reply:
    status, headers, body = exc.render(request_id)
    return Reply(status, body, headers)


class StreamReply:
    """An answer sent as it is produced (SSE); each write waits while the client is slow."""

    __slots__ = ("status", "headers", "thrifty_error", "_conn", "_ended")

    def __init__(self, headers: dict[str, str], status: int = 200) -> None:
        self.status = status
        self.headers = headers
        self.thrifty_error: ApiError | None = None
        self._conn: Conn | None = None
        self._ended = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: FrontRequest) -> None:
        self._conn = request.conn
        await self._conn.start_stream(self.status, self.headers)

    async def write(self, data: bytes) -> None:
        assert self._conn is not None, "prepare() first"
        await self._conn.write_chunk(data)

    async def write_eof(self) -> None:
        if self._conn is not None and not self._ended:
            self._ended = True
            await self._conn.end_stream()


Handler = Callable[[FrontRequest], Awaitable["Reply | StreamReply"]]


# --- aiohttp side: the same request path for requests that arrived through aiohttp -------
class AiohttpConn:
    """`Conn` over an aiohttp request, so handed-off connections run the same request path."""

    __slots__ = ("request", "response", "max_body_bytes")

    def __init__(self, request: web.Request, max_body_bytes: int) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.max_body_bytes = max_body_bytes

    async def read_body(self) -> bytes:
        try:
            return await self.request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"request body is larger than the limit of {self.max_body_bytes} bytes") from None

    async def start_stream(self, status: int, headers: dict[str, str]) -> None:
        self.response = web.StreamResponse(status=status, headers=headers)
        await self.response.prepare(self.request)

    async def write_chunk(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def end_stream(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


def aiohttp_handler(handler: Handler, max_body_bytes: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a front handler as an aiohttp handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        conn = AiohttpConn(request, max_body_bytes)
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await handler(FrontRequest(request.method, request.path, headers, request.content_length, None, conn))
        if isinstance(reply, Reply):
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        await reply.write_eof()
        assert conn.response is not None
        return conn.response

    return handle
