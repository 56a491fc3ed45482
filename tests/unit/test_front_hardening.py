"""Hardening of the raw front door, byte for byte over loopback sockets (RFC 9110/9112).

Each finding of issue 17 is a case here: smuggling through bare LF, CR or NUL in a
header value, obs-fold, a Content-Length that is not plain digits, Content-Length with
Transfer-Encoding, missing or doubled Host, too many or too large headers, a bare-LF
request, slow heads and bodies, request-id injection, and half-sent bodies holding
memory. Every rejected case asserts its status and that nothing reached the replica.

Replicas are `CountingStub`s: the fake `StubBackend` plus a count of every request
that reaches it on any path (the stub itself counts only the OpenAI endpoints).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit import proxy_harness
from tests.unit.proxy_harness import bare_sidecar_process, rss_kb, stack
from tests.unit.test_proxy_front import _connect, _response
from thrifty.sim.stub_backend import StubBackend, StubBehaviour

CHAT = json.dumps({"model": "small-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).encode()
HOT = b"POST /v1/chat/completions HTTP/1.1\r\n"


class CountingStub(StubBackend):
    """Fake replica: `StubBackend` that also records every request on any path but its probes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[str] = []

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            if request.path not in ("/metrics", "/health"):
                self.seen.append(f"{request.method} {request.path}")
            return await handler(request)

        app.middlewares.append(count)
        return app


@pytest.fixture(autouse=True)
def _counting_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_harness, "StubBackend", CountingStub)


def _head(*lines: bytes, body: bytes = b"") -> bytes:
    return HOT + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


SMUGGLED = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
CORPUS: list[tuple[str, bytes, int]] = [
    ("bare LF in a value hides Transfer-Encoding",
     _head(b"Host: x", b"Content-Type: application/json", b"X-A: b\nTransfer-Encoding: chunked",
           b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED), 400),
    ("bare CR in a value", _head(b"Host: x", b"X-A: b\rc", b"Content-Length: 2", body=b"{}"), 400),
    ("NUL in a value", _head(b"Host: x", b"X-A: b\x00c", b"Content-Length: 2", body=b"{}"), 400),
    ("obs-fold", _head(b"Host: x", b"X-A: b", b" folded", b"Content-Length: 2", body=b"{}"), 400),
    ("request id injecting a header", _head(b"Host: x", b"X-Request-Id: abc\nSet-Cookie: pwned=1", b"Content-Length: 2",
                                            body=b"{}"), 400),
    ("Content-Length with a form feed", _head(b"Host: x", b"Content-Length: \x0c82"), 400),
    ("Content-Length with a unit separator", _head(b"Host: x", b"Content-Length: 82\x1f"), 400),
    ("Content-Length with a no-break space", _head(b"Host: x", b"Content-Length: \xa082"), 400),
    ("Content-Length with a sign", _head(b"Host: x", b"Content-Length: +2", body=b"{}"), 400),
    ("Content-Length and Transfer-Encoding", _head(b"Host: x", b"Content-Length: %d" % len(SMUGGLED),
                                                   b"Transfer-Encoding: chunked", body=SMUGGLED), 400),
    ("two Content-Length headers", _head(b"Host: x", b"Content-Length: 2", b"Content-Length: 2", body=b"{}"), 400),
    ("no Host", _head(b"Content-Type: application/json", b"Content-Length: %d" % len(CHAT), body=CHAT), 400),
    ("two Host headers", _head(b"Host: x", b"Host: y", b"Content-Type: application/json",
                               b"Content-Length: %d" % len(CHAT), body=CHAT), 400),
    ("Host twice in different case", _head(b"host: x", b"HOST: y", b"Content-Type: application/json",
                                           b"Content-Length: %d" % len(CHAT), body=CHAT), 400),
    ("no Host on another path", b"GET /v1/other HTTP/1.1\r\n\r\n", 400),
    ("5,000 headers", _head(b"Host: x", *[b"X-H%d: v" % i for i in range(5000)]), 431),
    ("a 100 KB head in one write", _head(b"Host: x", *[b"X-Pad%d: %s" % (i, b"a" * 1000) for i in range(100)]), 431),
    ("space before the colon", _head(b"Host: x", b"X-A : b"), 400),
    ("HTTP/2.0 on an HTTP/1 port", b"POST /v1/chat/completions HTTP/2.0\r\nHost: x\r\n\r\n", 505),
]


@pytest.mark.parametrize(("name", "raw", "status"), CORPUS, ids=[c[0] for c in CORPUS])
async def test_malformed_head_is_rejected_and_nothing_reaches_the_replica(name: str, raw: bytes, status: int) -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        writer.write(raw)
        got, headers, body = await _response(reader)
        assert got == status, name
        assert headers["content-type"] == "application/json" and json.loads(body)["error"]["message"]
        assert "set-cookie" not in headers
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
        writer.close()
        await asyncio.sleep(0.05)
        assert s.backends[0].seen == [] and s.backends[0].stats.requests == 0, name


async def test_bare_lf_request_is_answered_at_once_not_after_a_timeout() -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        t0 = time.monotonic()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}")
        status, _, _ = await _response(reader)
        assert status == 400 and time.monotonic() - t0 < 1.0
        assert s.backends[0].seen == []
        writer.close()


async def test_well_formed_edge_cases_still_pass() -> None:
    """Not stricter than needed: OWS around values, HTTP/1.0 without Host, a tab inside a value."""
    async with stack([StubBehaviour()]) as s:
        for raw in (_head(b"Host: x", b"Content-Type:  application/json ", b"X-A: a\tb",
                          b"Content-Length: %d" % len(CHAT), body=CHAT),
                    b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT):
            reader, writer = await _connect(s.url)
            writer.write(raw)
            status, _, body = await _response(reader)
            assert status == 200, body
            writer.close()
        assert s.backends[0].stats.requests == 2


@pytest.mark.parametrize(("value", "reflected"), [
    ("req-42.a_b", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("abc def", False),
    ('abc"<script>', False),
])
async def test_request_id_is_reflected_only_when_it_is_a_short_token(value: str, reflected: bool) -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        writer.write(_head(b"Host: x", b"Content-Type: application/json", b"X-Request-Id: " + value.encode(),
                           b"Content-Length: %d" % len(CHAT), body=CHAT))
        status, headers, _ = await _response(reader)
        assert status == 200
        assert (headers["x-request-id"] == value) is reflected
        assert re.fullmatch(r"[!-~]{1,128}", headers["x-request-id"])
        writer.close()


async def test_slow_head_is_timed_out_with_a_408() -> None:
    """A client dripping its head a byte at a time is closed once the head timeout passes."""
    async with stack([StubBehaviour()]) as s:
        s.runner.front.head_timeout_s = 1.0
        reader, writer = await _connect(s.url)
        raw = _head(b"Host: x", b"Content-Type: application/json", b"Content-Length: %d" % len(CHAT), body=CHAT)
        t0 = time.monotonic()

        async def drip() -> None:
            for b in raw:
                writer.write(bytes([b]))
                await asyncio.sleep(0.25)

        dripper = asyncio.create_task(drip())
        status, _, _ = await _response(reader)
        assert status == 408 and time.monotonic() - t0 < 3.5
        assert await asyncio.wait_for(reader.read(), 5) == b""
        dripper.cancel()
        writer.close()
        assert s.backends[0].seen == []


async def test_slow_body_is_timed_out_and_its_buffer_dropped() -> None:
    async with stack([StubBehaviour()]) as s:
        front = s.runner.front
        front.body_timeout_s, front.min_body_bytes_per_s = 1.0, 1e9
        reader, writer = await _connect(s.url)
        writer.write(_head(b"Host: x", b"Content-Type: application/json", b"Content-Length: %d" % len(CHAT), body=CHAT[:5]))
        t0 = time.monotonic()
        status, _, _ = await _response(reader)
        assert status == 408 and time.monotonic() - t0 < 3.0
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert not front.connections
        writer.close()
        assert s.backends[0].seen == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RSS")
async def test_forty_half_sent_8mb_bodies_do_not_pin_memory(tmp_path: Path) -> None:
    """40 clients each send 7.5 MB of an 8 MB body and stop; once they leave, the memory goes back."""
    async with bare_sidecar_process(tmp_path) as (proc, port):
        before = rss_kb(proc.pid) / 1024
        size, sent = 8 * 1024 * 1024, 7_500_000
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()
        piece = b"x" * 250_000
        writers = []
        for _ in range(40):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            for _ in range(sent // len(piece)):
                writer.write(piece)
                await writer.drain()
            writers.append(writer)
        await asyncio.sleep(1.0)
        during = rss_kb(proc.pid) / 1024
        for writer in writers:
            writer.close()
        await asyncio.sleep(1.5)
        after = rss_kb(proc.pid) / 1024
        print(f"RSS before {before:.0f} MB, with 40 half bodies {during:.0f} MB, after they left {after:.0f} MB")
        assert proc.poll() is None, "the sidecar died"
        assert during - before > 200, f"the bodies were not buffered ({before:.0f} -> {during:.0f} MB)"
        assert after - before < 60, f"RSS {before:.0f} MB -> {during:.0f} MB with 40 half bodies -> {after:.0f} MB after"
