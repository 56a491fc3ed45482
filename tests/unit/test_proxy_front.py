"""The raw HTTP/1.1 front door, byte for byte over loopback sockets: framing, keep-alive,
pipelining, bad heads, hand-off to the aiohttp app, HTTP/1.0 and streaming back-pressure.

Replicas are `StubBackend` fakes on loopback (no model runs in unit tests).
"""

from __future__ import annotations

import asyncio
import json
import socket

from tests.unit.proxy_harness import stack
from thrifty.sim.stub_backend import StubBehaviour

CHAT = json.dumps({"model": "small-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).encode()
STREAM = json.dumps({"model": "small-model", "messages": [{"role": "user", "content": "hello"}], "stream": True}).encode()


def _post(body: bytes, *, path: str = "/v1/chat/completions", extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"POST {path} {version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, lower-case headers, body (Content-Length, chunked, or to the close)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await asyncio.wait_for(reader.readline(), 5)).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return status, headers, body


def _ok_requests(s) -> float:  # type: ignore[no-untyped-def]
    return s.sidecar.metrics.registry.get_sample_value(
        "thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "miss"}) or 0.0


async def test_keep_alive_and_pipelined_requests_answer_in_order() -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        writer.write(_post(CHAT, extra="X-Request-Id: one\r\n") + _post(CHAT, extra="X-Request-Id: two\r\n"))
        first, second = await _response(reader), await _response(reader)
        writer.write(_post(CHAT, extra="X-Request-Id: three\r\n"))  # the same connection, kept alive
        third = await _response(reader)
        assert [r[0] for r in (first, second, third)] == [200, 200, 200]
        assert [r[1]["x-request-id"] for r in (first, second, third)] == ["one", "two", "three"]
        assert json.loads(second[2])["usage"]["completion_tokens"] == 4
        assert s.backends[0].stats.requests == 3 and _ok_requests(s) == 3
        writer.close()


async def test_broken_heads_get_json_errors_and_a_close() -> None:
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/2.0\r\n\r\n", 505),
        (b"POST /v1/chat/completions HTTP/1.1\r\nX-Big: " + b"a" * 70_000, 431),
    ]
    async with stack([StubBehaviour()]) as s:
        for raw, status in cases:
            reader, writer = await _connect(s.url)
            writer.write(raw)
            got, headers, body = await _response(reader)
            assert got == status, raw[:40]
            assert headers["content-type"] == "application/json" and json.loads(body)["error"]["message"]
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
            writer.close()
        assert s.backends[0].stats.requests == 0


async def test_oversized_body_is_413_and_the_connection_closes() -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        size = s.sidecar.max_body_bytes + 1
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        writer.write(b"x" * 100_000)  # part of the body: the answer does not wait for the rest
        status, headers, body = await _response(reader)
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        writer.close()


async def test_chunked_and_expect_continue_bodies_go_through_aiohttp_with_the_same_path() -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        half = len(CHAT) // 2
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, CHAT[:half], len(CHAT) - half, CHAT[half:]))
        status, headers, body = await _response(reader)
        assert status == 200 and headers["x-thrifty-tier"] == "small" and json.loads(body)["choices"]
        writer.write(_post(CHAT))  # the handed-off connection keeps serving the hot path
        assert (await _response(reader))[0] == 200
        writer.close()

        reader, writer = await _connect(s.url)
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(CHAT)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
        writer.write(CHAT)
        assert (await _response(reader))[0] == 200
        writer.close()
        assert _ok_requests(s) == 3


async def test_other_paths_then_hot_path_on_one_connection() -> None:
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await _response(reader)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "small-model"
        writer.write(_post(CHAT))
        status, headers, _ = await _response(reader)
        assert status == 200 and headers["x-thrifty-tier"] == "small"
        writer.write(b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await _response(reader)
        assert status == 405 and json.loads(body)["error"]
        assert _ok_requests(s) == 1
        writer.close()


async def test_http10_client_gets_a_closed_connection_and_unchunked_stream() -> None:
    async with stack([StubBehaviour(chunks=3)]) as s:
        reader, writer = await _connect(s.url)
        writer.write(_post(CHAT, version="HTTP/1.0"))
        status, headers, body = await _response(reader)
        assert status == 200 and headers["connection"] == "close" and json.loads(body)["choices"]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        reader, writer = await _connect(s.url)
        writer.write(_post(STREAM, version="HTTP/1.0"))
        status, headers, body = await _response(reader)  # no Content-Length, no chunking: read to the close
        assert status == 200 and "transfer-encoding" not in headers
        assert body.rstrip().endswith(b"data: [DONE]")
        writer.close()


async def test_slow_stream_reader_applies_back_pressure() -> None:
    async with stack([StubBehaviour(chunks=20_000)]) as s:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = s.url.removeprefix("http://").split(":")
        sock.connect((host, int(port)))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(_post(STREAM))
        await asyncio.sleep(0.8)  # the client reads nothing meanwhile
        (conn,) = s.runner.front.connections
        # The relay waits on the client instead of queueing the 4 MB answer in the sidecar.
        assert conn.busy and conn.transport is not None and conn.transport.get_write_buffer_size() < 256 * 1024
        status, _, body = await asyncio.wait_for(_response(reader), 30)
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]") and body.count(b"data: ") > 20_000
        writer.close()
