"""The shared cache tier against a real `redis-server` (Debian package): several sidecar
cache instances (in-process `CostLevers`, each with its own Redis connections and mirror),
Redis killed and restarted mid-traffic, a slow Redis, a restarted sidecar rebuilding its
mirror. Skipped when redis-server is missing (fails under THRIFTY_REQUIRE_REAL=1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import zlib

import pytest
import redis
from prometheus_client import CollectorRegistry

from tests.realparts import missing
from tests.unit.test_levers_cost_levers import CountingEncoder, answer, ctx
from thrifty.config import parse_config
from thrifty.proxy.levers.cost_levers import CostLevers, query_text, semantic_context
from thrifty.proxy.levers.embedder import Embedder
from thrifty.proxy.levers.semantic_cache import partition_key
from thrifty.proxy.levers.shared.local_server import LocalRedis, redis_server_binary
from thrifty.proxy.levers.verifier import Verifier

TIERS = ["small", "large"]


@pytest.fixture
def server(tmp_path):
    if redis_server_binary() is None:
        missing("redis-server not installed (Debian package redis-server)")
    local = LocalRedis(tmp_path / "redis")
    local.start()
    yield local
    local.stop()


def make(url: str, *, exact: bool = True, registry: CollectorRegistry | None = None) -> tuple[CostLevers, CollectorRegistry]:
    registry = registry or CollectorRegistry()
    config = parse_config({
        "tiers": [{"name": "small", "model": "smol", "price": {"gpu_hour": 1}},
                  {"name": "large", "model": "big", "price": {"gpu_hour": 8}}],
        "router": {"enabled": False},
        "cache": {"exact": {"enabled": exact}, "semantic": {"sampled_tiers": ["small", "large"]},
                  "shared": {"url": url, "timeout_ms": 50, "breaker_cooldown_s": 0.5, "block_ms": 200}},
    })
    return CostLevers(config, registry, embedder=Embedder(CountingEncoder()), verifier=Verifier.load()), registry


async def serve(levers: CostLevers, text: str, tenant: str = "t1", temperature: float = 0) -> str:
    """One request through the cache path: lookup, and on a miss store an answer."""
    request = ctx(text, tenant=tenant, temperature=temperature)
    hit = await levers.lookup(request)
    if hit is not None:
        return hit.kind
    request.tier = "large"
    await levers.store(request, answer(f"answer to {text}"))
    return "miss"


async def synced(*fleet: CostLevers, timeout_s: float = 10) -> None:
    for levers in fleet:
        levers.semantic.ensure_started()
    await asyncio.wait_for(asyncio.gather(*(levers.semantic.synced.wait() for levers in fleet)), timeout_s)


async def visible(levers: CostLevers, count: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while len(levers.semantic) < count:
        assert time.monotonic() < deadline, f"mirror holds {len(levers.semantic)} of {count} entries"
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_exact_and_semantic_shared_across_sidecars(server) -> None:
    (a, reg_a), (b, reg_b), (c, _) = make(server.url), make(server.url), make(server.url)
    try:
        await synced(a, b, c)
        assert await serve(a, "What is the capital of France?") == "miss"
        await a.shared.drain()
        assert await serve(b, "What is the capital of France?") == "exact"  # from Redis
        assert metric(reg_b, "thrifty_shared_cache_lookups_total", kind="exact", result="hit") == 1
        # the semantic entry reached the other mirrors through the stream
        await visible(b, 1)
        await visible(c, 1)
        assert await serve(c, "How do I reset my password?", temperature=0.7) == "miss"
        await c.shared.drain()
        await visible(a, 2)
        assert await serve(a, "how do I reset my password?", temperature=0.7) == "semantic"
        assert metric(reg_a, "thrifty_shared_cache_lookups_total", kind="semantic", result="hit_remote") == 1
        # another tenant never gets them
        assert await serve(b, "What is the capital of France?", tenant="t2") == "miss"
        assert await serve(b, "how do I reset my password?", tenant="t2", temperature=0.7) == "miss"
        # no prompt in any key name; values compressed; every key has a TTL and a hash tag
        plain = redis.Redis.from_url(server.url)
        names = [n.decode() for n in plain.scan_iter("*")]
        assert names and not any("France" in n or "password" in n for n in names)
        for name in names:
            assert b"France" not in plain.dump(name) or name.endswith(":stream")
            if not name.endswith(":stream"):
                assert "{" in name and plain.pttl(name) > 0
        exact_names = [n for n in names if ":x:" in n]
        assert json_of(plain.get(exact_names[0]))["choices"][0]["message"]["content"].startswith("answer to")
    finally:
        for levers in (a, b, c):
            await levers.aclose()


def json_of(data: bytes) -> dict:
    import json

    return json.loads(zlib.decompress(data))


async def test_forget_propagates_and_restarted_sidecar_rebuilds(server) -> None:
    (a, _), (b, _) = make(server.url, exact=False), make(server.url, exact=False)
    try:
        await synced(a, b)
        for i in range(50):
            await serve(a, f"question number {i} about shipping", temperature=0.7)
        await a.shared.drain()
        await visible(b, 50)
        request = ctx("question number 7 about shipping", temperature=0.7)
        a.semantic.forget(partition_key("t1", semantic_context(request)), query_text(request))
        await a.shared.drain()
        deadline = time.monotonic() + 5
        while len(b.semantic) != 49:
            assert time.monotonic() < deadline, "the delete did not reach the other mirror"
            await asyncio.sleep(0.01)
        # a new pod (a restarted sidecar) rebuilds its mirror from Redis
        fresh, _ = make(server.url, exact=False)
        try:
            await synced(fresh)
            assert len(fresh.semantic) == 49
            assert await serve(fresh, "question number 3 about shipping", temperature=0.7) == "semantic"
        finally:
            await fresh.aclose()
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_killed_mid_traffic_then_restarted(server) -> None:
    fleet = [make(server.url)[0] for _ in range(3)]
    try:
        await synced(*fleet)
        for i in range(30):
            await serve(fleet[i % 3], f"before the outage {i}")
        for levers in fleet:
            await levers.shared.drain()
        server.kill()
        slow = []
        for i in range(60):  # traffic while Redis is down: answers, never an exception
            started = time.perf_counter()
            await serve(fleet[i % 3], f"during the outage {i % 20}")
            slow.append(time.perf_counter() - started)
        assert max(slow) < 0.3, f"a request waited {max(slow):.3f} s on a dead Redis"
        server.start()  # same directory: the append-only file brings back what was acknowledged
        await synced(*fleet, timeout_s=15)
        plain = redis.Redis.from_url(server.url)
        assert sum(1 for _ in plain.scan_iter("thr:x:*")) == 30
        # hit rate recovers: a question stored on one pod after the restart hits on the others
        await asyncio.sleep(0.6)  # the breakers' cool-down
        hits = 0
        for i in range(20):
            await serve(fleet[0], f"after the restart {i}")
            await fleet[0].shared.drain()
            hits += await serve(fleet[1 + i % 2], f"after the restart {i}") == "exact"
        assert hits == 20
        # and the entries from before the outage are shared again
        assert await serve(fleet[1], "before the outage 0") == "exact"
    finally:
        for levers in fleet:
            await levers.aclose()


async def test_slow_redis_costs_one_short_timeout_then_nothing(server) -> None:
    (a, reg), = [make(server.url)]
    try:
        await synced(a)
        os.kill(server.proc.pid, signal.SIGSTOP)  # a hung server: connections open, no answers
        try:
            waits = []
            for i in range(20):
                started = time.perf_counter()
                assert await serve(a, f"while stalled {i}") == "miss"
                waits.append(time.perf_counter() - started)
            assert max(waits) < 0.2, waits
            assert sum(w > 0.04 for w in waits) <= 4, waits  # the breaker opened after a few timeouts
            assert metric(reg, "thrifty_shared_cache_up") == 0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.6)
        await serve(a, "after the stall")
        await a.shared.drain()
        assert metric(reg, "thrifty_shared_cache_up") == 1
    finally:
        await a.aclose()
