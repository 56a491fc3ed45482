"""A lean keep-alive HTTP/1.1 client for talking to replicas: raw bytes in, raw bytes out.

Why not aiohttp's client: profiling the sidecar put its request machinery (request and
response objects, payload writers, a timer rescheduled on every read) at the top of the
hot path. The sidecar only POSTs JSON to replicas it knows and needs back the status,
Content-Type and the body as it arrives; llhttp (through `httptools`) does the framing
(Content-Length, chunked, interim 1xx answers) and rejects a malformed answer, and the
body pieces go through untouched. Connections are pooled per replica (LIFO, so
the warmest one is reused); one lazy timer per request covers both the idle (first
byte / between reads) and the total timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

from thrifty.config import TimeoutSettings

MAX_HEAD_BYTES = 64 * 1024
PAUSE_ABOVE_BYTES = 256 * 1024  # stop reading the replica while this much waits for a slow client
IDLE_REUSE_S = 4.0  # uvicorn (vLLM) closes idle keep-alive connections after 5 s


class UpstreamUnavailable(Exception):
    """The replica could not be reached (or refused with 502/503) before any byte was relayed."""


class UpstreamBroken(ConnectionError):
    """The replica's connection failed after its answer began (the answer is incomplete)."""


class UpstreamTimeout(TimeoutError):
    """The replica sent nothing for the idle timeout, or the request ran past its total time."""


class _Connection(asyncio.Protocol):
    """One TCP connection to a replica; feeds whatever arrives to the response in progress."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self.endpoint: _Endpoint | None = None
        self.parser = httptools.HttpResponseParser(self)  # one per connection: answers follow each other

    # llhttp callbacks, for the answer in progress
    def on_message_begin(self) -> None:
        if self.response is not None:
            self.response._on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None and not self.response.complete:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip(" \t")

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.response.complete:
            self.response._push(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._on_message_complete()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.response is not None:
            self.response._feed(data)
        elif self.transport is not None:  # bytes nobody asked for: the connection is unusable
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._lost(exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """The answer to one request: head parsed on arrival, body delivered as it comes."""

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop, timeouts: TimeoutSettings) -> None:
        self._conn = conn
        self._loop = loop
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.received_any = False
        self._head_bytes = 0
        self._head_done = False
        self._interim = False  # parsing a 1xx answer (100 Continue): the real one follows
        self._to_close = False  # the body ends when the replica closes the connection
        self._pieces: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self.complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle_s = timeouts.first_byte_s
        self._deadline = loop.time() + timeouts.total_s
        self._last = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(min(self._last + self._idle_s, self._deadline), self._on_timer)
        self._released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/json")

    # --- parsing (called by the protocol) -------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self.complete:  # bytes past the end of the answer: the connection is not clean
            self.keep_alive = False
            return
        self.received_any = True
        self._last = self._loop.time()
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._conn.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("the replica switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"malformed response from the replica: {exc}"))
            return
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(UpstreamBroken("the replica's response head is too large"))
            return
        self._wake()

    def _on_message_begin(self) -> None:
        if self.complete:  # a second answer on the heels of the first: do not reuse the connection
            self.keep_alive = False

    def _on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self._conn.parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True
            self.headers = {}
            return
        self.status = status
        self._interim = False
        self._head_done = True
        headers = self.headers
        self._to_close = ("content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()
                          and status not in (204, 304))
        if self._to_close:
            self.keep_alive = False

    def _on_message_complete(self) -> None:
        if self._interim or self.complete:
            self._interim = False
            return
        if not self._conn.parser.should_keep_alive():
            self.keep_alive = False
        self.complete = True

    def _push(self, data: bytes) -> None:
        self._pieces.append(data)
        self._queued += len(data)
        if self._queued > PAUSE_ABOVE_BYTES and not self._paused and not self.complete:
            transport = self._conn.transport
            if transport is not None:
                transport.pause_reading()
                self._paused = True

    def _lost(self, exc: Exception | None) -> None:
        if self.complete:
            return
        if self._head_done and self._to_close:
            self.complete = True
            self._wake()
            return
        why = f"{type(exc).__name__}: {exc}" if exc else "the replica closed the connection"
        self._fail(UpstreamBroken(why))

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self.keep_alive = False
        self._conn.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        if self.complete or self._error is not None or self._released:
            return
        now = self._loop.time()
        due = self._deadline if self._paused else min(self._last + self._idle_s, self._deadline)
        if now < due:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        total = now >= self._deadline
        self._fail(UpstreamTimeout("total time ran out" if total else "no data for the idle timeout"))

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        await self._waiter

    # --- consuming ----------------------------------------------------------------------
    async def head(self) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._queued = 0
        return data

    async def next_piece(self) -> bytes | None:
        """The body that has arrived since the last call (chunk framing removed), or None at the end."""
        while True:
            pieces = self._pieces
            if pieces:  # everything that has arrived, in one piece: fewer writes to the client
                data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self._queued = 0
                if self._paused and self._queued <= PAUSE_ABOVE_BYTES // 2:
                    self._paused = False
                    transport = self._conn.transport
                    if transport is not None:
                        transport.resume_reading()
                return data
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def release(self, pool: UpstreamPool | None = None) -> None:
        """Done with the answer: reuse the connection if it is clean, else drop it."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self._conn
        conn.response = None
        if pool is not None and self.complete and self.keep_alive and self._error is None and not conn.closed:
            if self._paused and conn.transport is not None:
                conn.transport.resume_reading()
            pool._put(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Abandon the answer: the connection closes, which aborts the engine's request."""
        self.keep_alive = False
        self.release()


class _Endpoint:
    """A replica's address, parsed once, with its idle connections."""

    __slots__ = ("host", "port", "ssl", "host_header", "head_prefix", "idle")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"replica URL must be http(s)://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.host_header = parts.netloc.rpartition("@")[2]
        self.head_prefix = parts.path.rstrip("/")
        self.idle: deque[_Connection] = deque()  # oldest first; reuse takes the newest


class UpstreamPool:
    """Keep-alive connections to every replica, opened on demand and reused LIFO."""

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self.timeouts = timeouts
        self._endpoints: dict[str, _Endpoint] = {}

    def _endpoint(self, base_url: str) -> _Endpoint:
        ep = self._endpoints.get(base_url)
        if ep is None:
            ep = self._endpoints[base_url] = _Endpoint(base_url)
        return ep

    def _put(self, conn: _Connection) -> None:
        ep = conn.endpoint
        if ep is None:
            conn.abort()
            return
        now = conn.idle_since = time.monotonic()
        idle = ep.idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= IDLE_REUSE_S):  # drop stale ones
            idle.popleft().abort()
        idle.append(conn)

    async def _connect(self, ep: _Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, ep.host, ep.port, ssl=ep.ssl), self.timeouts.connect_s)
        except TimeoutError:
            raise UpstreamUnavailable(f"connect timed out after {self.timeouts.connect_s:g} s") from None
        except OSError as exc:
            raise UpstreamUnavailable(f"cannot connect: {type(exc).__name__}: {exc}") from None
        conn.endpoint = ep
        return conn

    def _take_idle(self, ep: _Endpoint) -> _Connection | None:
        now = time.monotonic()
        while ep.idle:
            conn = ep.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_REUSE_S and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
            conn.abort()
        return None

    async def post(self, base_url: str, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        return await self.request("POST", base_url, path, body, headers)

    async def get(self, base_url: str, path: str) -> tuple[int, bytes]:
        """A small GET (the replica's /metrics or /health): status and whole body."""
        resp = await self.request("GET", base_url, path, b"", {})
        try:
            body = await resp.read()
        except BaseException:
            resp.close()
            raise
        resp.release(self)
        return resp.status, body

    async def request(self, method: str, base_url: str, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send the request and wait for the answer's head (status and headers).

        Raises `UpstreamUnavailable` when nothing came back (safe to try another replica)
        and `UpstreamTimeout` when the replica accepted the request but did not answer.
        A reused connection that the replica had already closed is retried once on a
        fresh one, so an idle keep-alive race never counts against the replica.
        """
        ep = self._endpoint(base_url)
        head = [f"{method} {ep.head_prefix}{path} HTTP/1.1\r\nHost: {ep.host_header}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                continue
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1", "replace") + body
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            conn = self._take_idle(ep) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(ep)
            resp = UpstreamResponse(conn, loop, self.timeouts)
            conn.response = resp
            try:
                assert conn.transport is not None
                conn.transport.write(request)
                await resp.head()
            except (UpstreamBroken, RuntimeError) as exc:  # RuntimeError: the transport closed under us
                resp.close()
                if reused and not resp.received_any:
                    continue
                raise UpstreamUnavailable(f"ServerDisconnected: {exc}") from None
            except BaseException:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable")

    def close(self) -> None:
        for ep in self._endpoints.values():
            for conn in ep.idle:
                conn.abort()
            ep.idle.clear()
