"""The sidecar's own HTTP/1.1 upstream client, against scripted raw servers on loopback.

Each server here is a few lines of `asyncio.start_server` that write exact bytes, so the
client is checked on the framings and faults a real replica (uvicorn, vLLM) can produce:
chunk boundaries anywhere, idle keep-alive connections closed by the server, answers cut
short, replicas that never answer. The last test runs the whole sidecar on uvloop, the
loop `thrifty proxy` uses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import uvloop

from tests.unit.proxy_harness import stack
from thrifty.config import TimeoutSettings
from thrifty.sim.stub_backend import StubBehaviour
from thrifty.proxy.http.upstream import UpstreamBroken, UpstreamPool, UpstreamTimeout, UpstreamUnavailable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


class ScriptedServer:
    """A loopback server that runs `handler` per connection and counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


TIMEOUTS = TimeoutSettings(connect_s=1, first_byte_s=0.3, total_s=5)


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
async def test_chunked_body_decoded_whatever_the_packet_boundaries(step: int) -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i, e in enumerate(events):
        wire += b"%x;ext=%d\r\n%s\r\n" % (len(e), i, e)
    wire += b"0\r\nX-Trailer: yes\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _read_request(reader)
            for i in range(0, len(wire), step):
                writer.write(wire[i : i + step])
                await writer.drain()

    async with ScriptedServer(handler) as srv:
        pool = UpstreamPool(TIMEOUTS)
        for _ in range(2):  # the second request reuses the connection: the framing ended cleanly
            resp = await pool.post(srv.url, "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            got = b""
            while (piece := await resp.next_piece()) is not None:
                got += piece
            assert got == b"".join(events)
            resp.release(pool)
        pool.close()
        assert srv.connections == 1


async def test_idle_connection_closed_by_the_replica_is_retried_on_a_fresh_one() -> None:
    body = b'{"ok": true}'

    async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.read(1)  # wait for the next request, then drop it unanswered

    async with ScriptedServer(answer_once_then_hang_up) as srv:
        pool = UpstreamPool(TIMEOUTS)
        for _ in range(3):
            resp = await pool.post(srv.url, "/x", b"{}", {})
            assert await resp.read() == body
            resp.release(pool)
        pool.close()
        assert srv.connections >= 3  # each stale connection was replaced, never reported as a failure


async def test_replica_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(10)

    async with ScriptedServer(silent) as srv:
        pool = UpstreamPool(TIMEOUTS)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamTimeout):
            await pool.post(srv.url, "/x", b"{}", {})
        assert 0.25 < loop.time() - start < 1.5
        pool.close()


async def test_answer_cut_short_is_an_error_not_a_short_body() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()

    async with ScriptedServer(cut) as srv:
        pool = UpstreamPool(TIMEOUTS)
        resp = await pool.post(srv.url, "/x", b"{}", {})
        with pytest.raises(UpstreamBroken):
            await resp.read()
        resp.close()
        pool.close()


async def test_interim_100_continue_is_skipped() -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)

    async with ScriptedServer(interim) as srv:
        pool = UpstreamPool(TIMEOUTS)
        resp = await pool.post(srv.url, "/x", b"{}", {})
        assert resp.status == 201 and await resp.read() == b"ok"
        resp.release(pool)
        pool.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\r\nok",  # bare LF inside a header
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \x0c2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",  # not a chunk size
], ids=["bare-lf", "cl-and-te", "cl-form-feed", "bad-chunk-size"])
async def test_malformed_answer_is_refused_not_relayed(answer: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read(1)

    async with ScriptedServer(bad) as srv:
        pool = UpstreamPool(TIMEOUTS)
        with pytest.raises((UpstreamUnavailable, UpstreamBroken)):
            resp = await pool.post(srv.url, "/x", b"{}", {})
            await resp.read()
        pool.close()


async def test_refused_connection_is_unavailable() -> None:
    async with ScriptedServer(lambda r, w: asyncio.sleep(0)) as srv:
        url = srv.url
    pool = UpstreamPool(TIMEOUTS)
    with pytest.raises(UpstreamUnavailable):
        await pool.post(url, "/x", b"{}", {})


def test_sidecar_on_uvloop_relays_plain_and_streamed_answers() -> None:
    async def scenario() -> None:
        async with stack([StubBehaviour(chunks=3)]) as s, aiohttp.ClientSession() as http:
            body = {"model": "small-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(3):
                async with http.post(s.url + "/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["choices"][0]["message"]["content"] == "w0 w1 w2 "
            async with http.post(s.url + "/v1/chat/completions", json={**body, "stream": True}) as resp:
                events = [e for e in (await resp.read()).split(b"\n\n") if e]
            assert events[-1] == b"data: [DONE]" and len(events) == 5
            assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "w0 "
            tokens = s.sidecar.metrics.registry.get_sample_value("thrifty_tokens_total", {"tier": "small", "kind": "output"})
            assert tokens == 3 * 3 + 3

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
