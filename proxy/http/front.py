"""The sidecar's front door: a raw asyncio HTTP/1.1 server for the three hot endpoints.

Why not aiohttp's server here: profiling put its per-request machinery (request objects,
payload streams, writers, keep-alive timers) at a quarter of the sidecar's CPU, more than
the request path itself. The hot endpoints need little: keep-alive, a Content-Length
body, a complete JSON answer or a chunked SSE stream with back-pressure, and the handler
cancelled when the client leaves. Everything else (other paths, other methods, chunked
or `Expect: 100-continue` request bodies, upgrades) is handed, connection and all, to
the aiohttp app on the same port, which keeps the connection from then on.

Framing and header syntax are llhttp's (through `httptools`, as uvicorn does): it rejects
bare CR/LF/NUL in values, obs-fold, a malformed or duplicated Content-Length and
Content-Length with Transfer-Encoding. On top of it this module bounds the head (size,
header count, one Host) and the time a head or body may take, so a slow or half-sent
request cannot hold a connection or its buffer.

The request path sees only `FrontRequest` and answers with `Reply` or `StreamReply`;
`AiohttpConn` lets the same code answer requests that arrived through aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Container
from http import HTTPStatus

import httptools
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.http.messages import FrontRequest, Handler, Reply, error_reply

log = logging.getLogger("thrifty.proxy")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; more is a 431
MAX_HEADERS = 100  # header lines per request; more is a 431
HEAD_TIMEOUT_S = 10.0  # a request head must arrive whole within this long of its first byte
BODY_TIMEOUT_S = 10.0  # a body must arrive within this long plus its size at MIN_BODY_BYTES_PER_S
MIN_BODY_BYTES_PER_S = 64 * 1024
KEEPALIVE_IDLE_S = 75.0  # as aiohttp: an idle keep-alive connection is closed after this long
DISCARD_LINGER_S = 5.0  # after a 413, read (and drop) the rest of the body this long at most
PIPELINE_BUFFER_BYTES = 256 * 1024  # stop reading a client that sends this far ahead of its answers
SWEEP_INTERVAL_S = 1.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# lower-case names of the headers common clients send, decoded once (a fixed set: never grown from input)
_NAMES = {n.encode(): n.lower() for n in (
    "Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language", "Connection", "Content-Type", "Content-Length",
    "Authorization", "X-Request-Id", "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS",
    "X-Stainless-Arch", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Retry-Count",
    "X-Stainless-Async", "X-Stainless-Read-Timeout", "X-Thrifty-Tier", "X-Thrifty-Cache", "X-Thrifty-Tenant")}
_NAMES.update({k.lower(): v for k, v in list(_NAMES.items())})


# --- the raw server ----------------------------------------------------------------------
class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FrontServer:
    """Listens on one socket; hot paths are served raw, other requests go to `fallback` (aiohttp)."""

    def __init__(self, handler: Handler, hot_paths: Container[str], fallback: Callable[[], asyncio.Protocol],
                 max_body_bytes: int) -> None:
        self.handler = handler
        self.hot_paths = hot_paths
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self.head_timeout_s = HEAD_TIMEOUT_S
        self.body_timeout_s = BODY_TIMEOUT_S
        self.min_body_bytes_per_s = MIN_BODY_BYTES_PER_S
        self.connections: set[HttpConnection] = set()
        self.server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, backlog: int = 2048) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: HttpConnection(self), host, port, backlog=backlog)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close connections idle too long or late with a head or body (one timer for all)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            if conn.late(now):
                conn.time_out()
            elif conn.idle_for(now) > KEEPALIVE_IDLE_S:
                conn.close()
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def stop_listening(self) -> None:
        """Take no new connections (the port is free for a successor at once)."""
        if self.server is not None:
            self.server.close()

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop; with `grace_s`, requests in flight get that long to finish first (a rolling
        restart then cuts no answer short): idle keep-alive connections are closed as they
        go idle, so clients reconnect to a successor. Whatever is left is aborted."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while grace_s > 0:
            for conn in [c for c in self.connections if not c.busy]:
                conn.close()
            if not self.connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        tasks = [c.abort() for c in list(self.connections)]
        pending = [t for t in tasks if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self.server is not None:
            await self.server.wait_closed()


class HttpConnection(asyncio.Protocol):
    """One client connection: parse a request, run the handler, write the answer, repeat.

    Each request head is fed to a fresh llhttp parser only up to its end (the first
    CRLFCRLF, which is where llhttp ends a head it accepted), so the raw bytes of the
    request stay in `_buf` for a hand-off, and a Content-Length body is sliced from the
    buffer without passing through the parser."""

    def __init__(self, front: FrontServer) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._pending: FrontRequest | None = None  # head parsed, body still arriving
        self._task: asyncio.Task[None] | None = None
        self._keep_alive = True
        self._http10 = False
        self._chunked_out = False
        self._head_only = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._discard = 0  # body bytes still to drop after a 413
        self._last = 0.0
        self._deadline = math.inf  # when the head or body now arriving must be complete
        # the head being parsed
        self._parser: httptools.HttpRequestParser | None = None
        self._fed = 0  # bytes of `_buf` given to the parser
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_done = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._last = self.loop.time()
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._discard:  # the rest of a body too large to take (the 413 is on its way)
            self._discard -= min(self._discard, len(data))
            if not self._discard and self._task is None:
                self.close()
            return
        self._buf += data
        if self._task is None:
            self._last = self.loop.time()
            self._process()
        elif len(self._buf) > PIPELINE_BUFFER_BYTES and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the client is gone: close, which cancels its request

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._buf = bytearray()  # a half-sent body is not kept past its connection
        self._pending = None
        self.front.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # --- housekeeping -------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A request is being answered."""
        return self._task is not None

    def idle_for(self, now: float) -> float:
        return 0.0 if self._task is not None else now - self._last

    def late(self, now: float) -> bool:
        """A head or body has been arriving for longer than it may."""
        return self._task is None and now > self._deadline

    def time_out(self) -> None:
        """Answer 408 to a request that did not arrive in time, and close."""
        what = "body" if self._pending is not None else "head"
        self._reject(408, f"the request {what} did not arrive in time")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> asyncio.Task[None] | None:
        """Server shutdown: drop the connection; returns the handler still unwinding, if any."""
        task = self._task
        if self.transport is not None:
            self.transport.abort()
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    def _wake_writer(self) -> None:
        waiter = self._drain
        if waiter is not None:
            self._drain = None
            if not waiter.done():
                waiter.set_result(None)

    # --- llhttp callbacks (called from `feed_data`) -------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))  # decoded once the head is whole: one call less per header

    def on_headers_complete(self) -> None:
        self._head_done = True

    # --- parsing ------------------------------------------------------------------------
    def _process(self) -> None:
        """Start the next complete request in the buffer, if there is one."""
        while self._task is None and not self._lost:
            req = self._pending
            buf = self._buf
            if req is None:
                if self._parser is None:
                    if buf[:1] in (b"\r", b"\n"):  # stray CRLFs between requests are allowed
                        del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
                    if not buf:
                        return
                    self._start_head()
                try:
                    req = self._parse_head()
                except _BadRequest as exc:
                    self._reject(exc.status, str(exc))
                    return
                if req is None:
                    return  # the head is not all here yet (or the connection was handed off)
                need = req.content_length or 0
                if need > self.front.max_body_bytes:  # the handler answers 413
                    self._keep_alive = False
                    self._discard = max(0, need - len(buf))
                    self._buf = bytearray()
                    self._dispatch(req)
                    return
                self._pending = req
                if len(buf) < need:  # the body is still on its way: it gets a deadline too
                    self._deadline = self._last + self.front.body_timeout_s + need / self.front.min_body_bytes_per_s
            need = req.content_length or 0
            if len(buf) < need:
                return
            req.body = bytes(buf[:need]) if need else b""
            del buf[:need]
            self._pending = None
            self._dispatch(req)

    def _start_head(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._fed = 0
        self._url = b""
        self._raw_headers = []
        self._head_done = False
        self._deadline = self._last + self.front.head_timeout_s  # `_last`: when these bytes arrived

    def _parse_head(self) -> FrontRequest | None:
        """Feed the head to llhttp; the request once the head is whole, or None (raises `_BadRequest`).

        None also when the request is for the aiohttp app: the connection is handed off."""
        parser = self._parser
        assert parser is not None
        buf = self._buf
        end = buf.find(b"\r\n\r\n", max(0, self._fed - 3))
        upto = len(buf) if end == -1 else end + 4
        if upto > MAX_HEAD_BYTES:
            raise _BadRequest(431, f"request head is larger than {MAX_HEAD_BYTES} bytes")
        if upto > self._fed:
            try:
                parser.feed_data(buf if self._fed == 0 and upto == len(buf) else bytes(buf[self._fed : upto]))
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                raise (cause if isinstance(cause, _BadRequest) else _BadRequest(400, "malformed request head")) from None
            except httptools.HttpParserError as exc:
                raise _BadRequest(400, f"malformed request: {exc}") from None
            self._fed = upto
        if end == -1:
            return None
        if not self._head_done:
            raise _BadRequest(400, "malformed request head")
        self._parser = None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _BadRequest(505, f"unsupported protocol HTTP/{version}")
        raw = self._raw_headers
        if len(raw) > MAX_HEADERS:
            raise _BadRequest(431, f"more than {MAX_HEADERS} header lines")
        headers = {_NAMES.get(k) or k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        for key, value in headers.items():
            if value[-1:] in (" ", "\t"):  # llhttp drops leading whitespace, not trailing
                headers[key] = value.rstrip(" \t")
        hosts = ("host" in headers) if len(headers) == len(raw) else sum(k.lower() == b"host" for k, _ in raw)  # names repeat: count
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise _BadRequest(400, "an HTTP/1.1 request needs exactly one Host header")
        path = self._url.partition(b"?")[0].decode("latin-1")
        if (path not in self.front.hot_paths or parser.get_method() != b"POST" or "transfer-encoding" in headers
                or "expect" in headers or "upgrade" in headers):
            self._hand_off()
            return None
        del buf[:upto]
        length = headers.get("content-length")
        self._http10 = version == "1.0"
        self._keep_alive = parser.should_keep_alive()
        return FrontRequest("POST", path, headers, int(length) if length else 0, None, self)

    def _reject(self, status: int, message: str) -> None:
        """A request too broken to parse (or too slow): answer with an OpenAI-style error and close."""
        self._keep_alive = False
        self._head_only = False
        self._buf = bytearray()
        self._pending = None
        self._parser = None
        self._deadline = math.inf
        reply = error_reply(ApiError(status, message))
        self._write_reply(reply.status, reply.headers, reply.body)
        self.close()

    def _hand_off(self) -> None:
        """Give the connection, with the bytes read so far, to the aiohttp app."""
        transport = self.transport
        assert transport is not None
        self.front.connections.discard(self)
        self.transport = None
        protocol = self.front.fallback()
        data = bytes(self._buf)
        self._buf = bytearray()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        protocol.data_received(data)

    # --- running the handler ------------------------------------------------------------
    def _dispatch(self, req: FrontRequest) -> None:
        self._deadline = math.inf
        self._chunked_out = False
        self._head_only = req.method == "HEAD"
        self._task = self.loop.create_task(self._run(req))

    async def _run(self, req: FrontRequest) -> None:
        try:
            reply = await self.front.handler(req)
            if isinstance(reply, Reply):
                self._write_reply(reply.status, reply.headers, reply.body)
            else:
                await reply.write_eof()
        except asyncio.CancelledError:  # the client left (or the server is shutting down)
            self._task = None
            if self.transport is not None:
                self.transport.abort()
            return
        except Exception:  # a bug in the request path: a 500 if nothing was sent yet, else cut
            log.exception("request handler failed")
            self._task = None
            if self.transport is not None:
                if self._chunked_out:
                    self.transport.abort()
                else:
                    self._keep_alive = False
                    reply = error_reply(ApiError(500, "internal error in the sidecar"))
                    self._write_reply(reply.status, reply.headers, reply.body)
                    self.close()
            return
        self._task = None
        self._last = self.loop.time()
        if self._lost or self.transport is None:
            return
        if not self._keep_alive:
            if not self._discard:
                self.close()
            else:
                self.loop.call_later(DISCARD_LINGER_S, self.close)
            return
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self._buf:
            self._process()

    # --- writing ------------------------------------------------------------------------
    def _head(self, status: int, headers: dict[str, str], framing: str) -> bytes:
        # a value with CR or LF would split the head: dropped (no request path sets one; a guard)
        lines = [f"{k}: {v}\r\n" for k, v in headers.items() if "\n" not in v and "\r" not in v]
        if not self._keep_alive:
            lines.append("Connection: close\r\n")
        elif self._http10:
            lines.append("Connection: keep-alive\r\n")
        lines.append(framing)
        return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")) + "".join(lines).encode("latin-1", "replace")

    def _write_reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        transport = self.transport
        if transport is None or self._lost:
            return
        head = self._head(status, headers, f"Content-Length: {len(body)}\r\n\r\n")
        transport.write(head if self._head_only else head + body)

    async def start_stream(self, status: int, headers: dict[str, str]) -> None:
        if self._lost or self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        if self._http10:  # no chunked encoding in HTTP/1.0: the end of the answer is the close
            self._keep_alive = False
            framing = "\r\n"
        else:
            self._chunked_out = True
            framing = "Transfer-Encoding: chunked\r\n\r\n"
        self.transport.write(self._head(status, headers, framing))

    async def write_chunk(self, data: bytes) -> None:
        if self._lost or self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        if not data:
            return
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked_out else data)
        if self._write_paused:  # back-pressure: wait until the client has read enough
            self._drain = self.loop.create_future()
            await self._drain
            if self._lost:
                raise ConnectionResetError("the client closed the connection")

    async def end_stream(self) -> None:
        if self._lost or self.transport is None:
            return
        if self._chunked_out:
            self.transport.write(b"0\r\n\r\n")

    async def read_body(self) -> bytes:
        return b""  # never reached: the raw front reads the body before calling the handler
