"""Talking to one upstream replica: open the request, then relay the answer.

`open_upstream` fails with `UpstreamUnavailable` only when nothing has reached the
client yet, so the caller may retry on another replica. `relay_stream` forwards SSE
events as they arrive (each write awaits the client's socket: back-pressure), picks
the `usage` chunk out for accounting, and if the replica dies mid-stream ends the
client's stream with an OpenAI-shaped error event instead of leaving it hanging.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from thrifty.config import TimeoutSettings
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.http.front import StreamReply
from thrifty.proxy.http.upstream import UpstreamBroken, UpstreamPool, UpstreamResponse, UpstreamUnavailable

__all__ = ["ClientGone", "UpstreamUnavailable", "find_usage", "make_session", "open_upstream", "read_body", "relay_stream"]

_USAGE_RE = re.compile(rb'"usage":\s*\{')
RETRYABLE_STATUS = frozenset({502, 503})
_DECODER = json.JSONDecoder()


class ClientGone(Exception):
    """The client closed its connection; the caller cancels the upstream request."""


def make_session(timeouts: TimeoutSettings, max_connections: int = 4096) -> aiohttp.ClientSession:
    """The aiohttp client for the rare paths (passthrough of unknown endpoints), not the hot one."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.first_byte_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"), cookie_jar=aiohttp.DummyCookieJar())


async def open_upstream(pool: UpstreamPool, base_url: str, path: str, body: bytes, headers: dict[str, str],
                        timeouts: TimeoutSettings) -> UpstreamResponse:
    try:
        resp = await pool.post(base_url, path, body, headers)
    except TimeoutError:
        raise ApiError(504, f"upstream replica did not answer within {timeouts.first_byte_s:g} s",
                       type="timeout_error", code="upstream_timeout", outcome="timeout") from None
    if resp.status in RETRYABLE_STATUS:
        resp.close()
        raise UpstreamUnavailable(f"replica answered {resp.status}")
    return resp


async def read_body(resp: UpstreamResponse, timeouts: TimeoutSettings) -> bytes:
    """The complete non-streaming answer; a replica dying or stalling is a clear error."""
    try:
        return await resp.read()
    except TimeoutError:
        resp.close()
        raise ApiError(504, f"upstream replica stopped answering for {timeouts.first_byte_s:g} s",
                       type="timeout_error", code="upstream_timeout", outcome="timeout") from None
    except UpstreamBroken as exc:
        resp.close()
        raise UpstreamUnavailable(f"replica closed the connection mid-answer: {exc}") from None


def find_usage(raw: bytes) -> dict[str, object] | None:
    """The `usage` object of a JSON answer, decoded without parsing the whole body."""
    start = raw.rfind(b'"usage"')  # usage comes last in vLLM's answers: search from the end
    m = _USAGE_RE.match(raw, start) if start != -1 else None
    if m is None:  # the last `"usage"` was inside a string: take the last real key
        for m in _USAGE_RE.finditer(raw):
            pass
        if m is None:
            return None
    try:
        usage, _ = _DECODER.raw_decode(raw[m.end() - 1 :].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


@dataclass(slots=True)
class StreamResult:
    usage: dict[str, object] | None = None
    first_byte_at: float | None = None
    error: ApiError | None = None  # the upstream failed mid-stream
    events: int = 0


async def relay_stream(resp: UpstreamResponse, out: StreamReply, *, strip_usage: bool,
                       on_gap: Callable[[float], None], timeouts: TimeoutSettings) -> StreamResult:
    """Forward SSE events from `resp` to `out` until the upstream ends; never raises for upstream faults."""
    result = StreamResult()
    pending = b""
    last = time.monotonic()
    try:
        while (data := await resp.next_piece()) is not None:
            if pending:
                data = pending + data
            cut = data.rfind(b"\n\n")
            if cut == -1:
                pending = data
                continue
            pending = data[cut + 2 :]
            events = data[: cut + 2]
            if b'"usage"' in events and _USAGE_RE.search(events):
                events = _take_usage(events, result, strip_usage)
                if not events:
                    continue
            now = time.monotonic()
            if result.first_byte_at is None:
                result.first_byte_at = now
            else:
                on_gap(now - last)
            last = now
            result.events += 1
            await _write(out, events)
        if pending.strip():
            await _write(out, pending if pending.endswith(b"\n\n") else pending + b"\n\n")
    except TimeoutError:
        result.error = ApiError(504, f"upstream replica stalled for {timeouts.first_byte_s:g} s mid-stream",
                                type="timeout_error", code="upstream_timeout", outcome="timeout")
    except UpstreamBroken as exc:
        result.error = ApiError(502, f"upstream replica failed mid-stream ({exc}); the answer is incomplete",
                                type="upstream_error", code="upstream_disconnected", outcome="upstream_error")
    if result.error is not None:
        resp.close()
        await _write(out, result.error.sse_event())
    return result


async def _write(out: StreamReply, data: bytes) -> None:
    try:
        await out.write(data)
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport already closed
        raise ClientGone(str(exc)) from None


def _take_usage(events: bytes, result: StreamResult, strip: bool) -> bytes:
    kept: list[bytes] = []
    for event in events.split(b"\n\n"):
        if not event:
            continue
        if _USAGE_RE.search(event) and event.startswith(b"data: "):
            try:
                chunk = json.loads(event[6:])
            except ValueError:
                chunk = None
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                result.usage = chunk["usage"]
                if strip and not chunk.get("choices"):
                    continue
        kept.append(event + b"\n\n")
    return b"".join(kept)
