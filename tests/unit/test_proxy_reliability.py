"""Faults the sidecar must survive: dead, slow and silent replicas, and many streams at once.

Replicas are `StubBackend` fakes on loopback (named so: no model runs in unit tests).
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

import pytest

from tests.unit.proxy_harness import config_for, stack
from thrifty.sim.stub_backend import StubBehaviour


def _chat(i: int, stream: bool = False) -> dict[str, object]:
    return {"model": "small-model", "stream": stream, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"question number {i} " * 3}]}


async def _stream(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> list[bytes]:
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        raw = await resp.read()
    return [e for e in raw.split(b"\n\n") if e]


async def test_replica_killed_mid_stream() -> None:
    slow_stream = StubBehaviour(chunks=20, chunk_delay_s=0.05)
    async with stack([slow_stream, StubBehaviour(chunks=20, chunk_delay_s=0.05)]) as s, aiohttp.ClientSession() as http:
        victim, survivor = s.backends
        streams = [asyncio.create_task(_stream(http, s.url, _chat(i, stream=True))) for i in range(6)]
        while victim.stats.inflight == 0 or survivor.stats.inflight == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        victim_url = victim.url
        killed_at = time.monotonic()
        await victim.kill()
        results = await asyncio.wait_for(asyncio.gather(*streams), timeout=10)
        failed = [r for r in results if b"upstream_disconnected" in r[-2]]
        whole = [r for r in results if r[-2].find(b'"finish_reason": "stop"') != -1]
        assert failed and whole and len(failed) + len(whole) == 6
        for events in failed:  # a terminating error event, then [DONE]
            assert events[-1] == b"data: [DONE]"
            assert json.loads(events[-2][6:])["error"]["type"] == "upstream_error"
        replica = next(r for r in s.sidecar.pool.all() if r.url == victim_url)
        assert not replica.healthy and replica.down_since is not None
        assert replica.down_since - killed_at < 1.0
        before = replica.picks
        for i in range(10):
            async with http.post(s.url + "/v1/chat/completions", json=_chat(100 + i)) as resp:
                assert resp.status == 200
        assert replica.picks == before


async def test_slow_replica_gets_less_traffic() -> None:
    async with stack([StubBehaviour(delay_s=0.004), StubBehaviour(delay_s=0.04)]) as s, aiohttp.ClientSession() as http:
        fast, slow = s.backends
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem, http.post(s.url + "/v1/chat/completions", json=_chat(i)) as resp:
                assert resp.status == 200
                await resp.read()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(120))), timeout=20)
        assert fast.stats.requests + slow.stats.requests == 120
        assert fast.stats.requests > 3 * slow.stats.requests, (fast.stats.requests, slow.stats.requests)


async def test_upstream_that_never_answers_times_out_clearly() -> None:
    timeouts = {"connect_s": 1, "first_byte_s": 0.5, "total_s": 5}
    async with stack([StubBehaviour(hang=True)], timeouts=timeouts) as s, aiohttp.ClientSession() as http:
        for stream in (False, True):
            start = time.monotonic()
            async with http.post(s.url + "/v1/chat/completions", json=_chat(1, stream=stream)) as resp:
                assert resp.status == 504
                err = await resp.json()
            assert time.monotonic() - start < 2.0
            assert err["error"]["code"] == "upstream_timeout" and "did not answer within 0.5 s" in err["error"]["message"]
        reg = s.sidecar.metrics.registry
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "timeout", "cache": "miss"}) == 2


async def test_client_disconnect_cancels_upstream() -> None:
    async with stack([StubBehaviour(chunks=200, chunk_delay_s=0.02)]) as s, aiohttp.ClientSession() as http:
        backend = s.backends[0]
        resp = await http.post(s.url + "/v1/chat/completions", json=_chat(1, stream=True))
        await resp.content.readany()
        assert backend.stats.inflight == 1
        resp.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 2
        while backend.stats.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert backend.stats.inflight == 0
        replica = s.sidecar.pool.all()[0]
        assert replica.inflight == 0


async def test_saturated_tier_sheds_with_retry_after() -> None:
    admission = {"max_queue": 1, "max_wait_s": 0.3, "saturation_waiting": 0, "saturation_kv": 1.0}
    async with stack([StubBehaviour(delay_s=0.05)], admission=admission, scrape_interval_s=10) as s, aiohttp.ClientSession() as http:
        replica = s.sidecar.pool.all()[0]
        replica.waiting = 5  # the engine reports a queue: saturated
        start = time.monotonic()
        results = await asyncio.gather(*(http.post(s.url + "/v1/chat/completions", json=_chat(i)) for i in range(3)))
        statuses = sorted(r.status for r in results)
        assert statuses == [429, 429, 503] or statuses == [429, 503, 503], statuses
        for r in results:
            assert "Retry-After" in r.headers and (await r.json())["error"]["message"]
            r.close()
        assert time.monotonic() - start < 2


async def test_retry_on_another_replica_before_first_byte() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], scrape_interval_s=10) as s, aiohttp.ClientSession() as http:
        dead = s.backends[0]
        await dead.kill()
        for i in range(4):
            async with http.post(s.url + "/v1/chat/completions", json=_chat(i)) as resp:
                assert resp.status == 200
        assert s.backends[1].stats.requests == 4
        assert {r.url: r.healthy for r in s.sidecar.pool.all()} == {dead.url: False, s.backends[1].url: True}


async def test_overloaded_replica_is_skipped_but_stays_up() -> None:
    """502/503 means busy, not down: the request goes to another replica and the busy one keeps its place."""
    async with stack([StubBehaviour(fail_status=503), StubBehaviour()], scrape_interval_s=10) as s, \
            aiohttp.ClientSession() as http:
        for i in range(4):
            async with http.post(s.url + "/v1/chat/completions", json=_chat(i)) as resp:
                assert resp.status == 200
        assert s.backends[1].stats.requests == 4 and s.backends[0].stats.requests >= 1
        assert all(r.healthy for r in s.sidecar.pool.all())
        assert s.sidecar.metrics.registry.get_sample_value("thrifty_retries_total", {"tier": "small"}) >= 1


async def test_thousand_concurrent_streams() -> None:
    behaviours = [StubBehaviour(chunks=2, chunk_delay_s=0.01) for _ in range(4)]
    async with stack(behaviours) as s:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            start = time.monotonic()
            results = await asyncio.wait_for(
                asyncio.gather(*(_stream(http, s.url, _chat(i, stream=True)) for i in range(1000)), return_exceptions=True),
                timeout=60)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        assert all(r[-1] == b"data: [DONE]" and b"error" not in r[-2] for r in results)  # type: ignore[index]
        assert sum(b.stats.requests for b in s.backends) == 1000
        assert all(r.inflight == 0 for r in s.sidecar.pool.all())
        print(f"1000 streams in {time.monotonic() - start:.1f}s")


async def test_graceful_stop_lets_streams_in_flight_finish_and_refuses_new_connections() -> None:
    """SIGTERM (`listen.drain_s`): the listening socket closes at once, answers in flight complete."""
    from thrifty.proxy.app import Sidecar, bound_port, serve
    from thrifty.sim.stub_backend import StubBackend

    backend = StubBackend(StubBehaviour(chunk_delay_s=0.1, chunks=6))
    url = await backend.start()
    sidecar = Sidecar(config_for({"small": [url]}), scrape_interval_s=10)
    listener = await serve(sidecar, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{bound_port(listener)}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/v1/chat/completions", json=_chat(1, stream=True)) as resp:
                first = await resp.content.readany()
                assert first
                stopping = asyncio.create_task(listener.cleanup(grace_s=5))
                await asyncio.sleep(0.05)
                rest = await resp.read()
            assert (first + rest).rstrip().endswith(b"data: [DONE]")  # the answer in flight was not cut
            await stopping
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.post(base + "/v1/chat/completions", json=_chat(2)) as again:
                    await again.read()
    finally:
        await backend.stop()
