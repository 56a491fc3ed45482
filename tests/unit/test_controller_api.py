"""The controller end to end on loopback: real gRPC stream from a real TelemetryClient
reading a real prometheus registry, and the HTTP API the TUI uses."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from thrifty.config import parse_config
from thrifty.controller.grpc_server import start_grpc
from thrifty.controller.http_api import build_app
from thrifty.controller.service import ControlPlane
from thrifty.proxy.observe.telemetry import TelemetryClient

CONFIG = {
    "tiers": [
        {"name": "small", "model": "s", "price": {"gpu_hour": 0.5}, "replicas": {"count": 1, "min": 1, "max": 3}},
        {"name": "large", "model": "l", "price": {"gpu_hour": 2.5}, "replicas": {"count": 2, "min": 1, "max": 6},
         "engine": {"speculative": {"method": "ngram"}, "max_num_seqs": 64}},  # running 64 = a full batch
    ],
    "router": {"threshold": 0.5},
}
TOKEN = "s3cret"
TELEMETRY_TOKEN = b"telemetry-token-0123456789"


class FakeSidecarRegistry:
    """A fake: a registry with a few of the sidecar's metric names (docs/metrics.md), set by hand;
    the real sidecar's exports are `thrifty.proxy.observe.metrics`."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("thrifty_requests_total", "", ["tier", "outcome", "cache"], registry=r)
        self.cost = Counter("thrifty_cost_dollars_total", "", ["tier"], registry=r)
        self.baseline = Counter("thrifty_baseline_cost_dollars_total", "", ["tier"], registry=r)
        self.ttft = Histogram("thrifty_ttft_seconds", "", ["tier"], registry=r)
        self.waiting = Gauge("thrifty_replica_waiting", "", ["tier", "replica"], registry=r)
        self.draft = Gauge("thrifty_replica_spec_draft_tokens", "", ["tier", "replica"], registry=r)
        self.accepted = Gauge("thrifty_replica_spec_accepted_tokens", "", ["tier", "replica"], registry=r)

    def traffic(self, n: int) -> None:
        for _ in range(n):
            self.requests.labels("large", "ok", "miss").inc()
            self.cost.labels("large").inc(0.01)
            self.baseline.labels("large").inc(0.02)
            self.ttft.labels("large").observe(0.3)
        self.requests.labels("small", "ok", "exact").inc()
        self.waiting.labels("large", "http://r1").set(3)


async def _controller(grpc_port: int = 0):
    plane = ControlPlane(parse_config(CONFIG))
    server, port = await start_grpc(plane, f"127.0.0.1:{grpc_port}", token=TELEMETRY_TOKEN)
    return plane, server, port


async def _wait(cond, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_telemetry_reaches_fleet_view_and_policy_comes_back() -> None:
    plane, server, port = await _controller()
    side = FakeSidecarRegistry()
    side.draft.labels("large", "http://r1").set(1000)  # the replica's counters before this sidecar started
    side.accepted.labels("large", "http://r1").set(500)
    policies: list[dict] = []
    client = TelemetryClient(f"127.0.0.1:{port}", side.registry, "sidecar-1", policies.append, interval_s=0.05,
                             token=TELEMETRY_TOKEN)
    try:
        await client.start()
        await _wait(lambda: client.connected and policies)
        assert policies[0]["router_threshold"] == 0.5
        side.traffic(10)
        side.draft.labels("large", "http://r1").set(1400)
        side.accepted.labels("large", "http://r1").set(700)
        await _wait(lambda: plane.fleet.summary("large", plane.clock(), 60).requests == 10)
        view = plane.fleet_json()
        large = next(t for t in view["tiers"] if t["name"] == "large")
        assert view["sidecars"] == 1
        assert view["fleet"]["savings_ratio"] == pytest.approx(1 - 0.1 / 0.2)
        assert large["queue"] == 3 and large["spec_acceptance"] == pytest.approx(0.5)  # 200/400 since start
        assert 250 <= large["ttft_p95_ms"] <= 500
        plane.set_router_threshold(0.2)
        await _wait(lambda: policies[-1]["router_threshold"] == pytest.approx(0.2))
        assert client.policy["router_threshold"] == pytest.approx(0.2)
    finally:
        await client.stop()
        await server.stop(None)


async def test_sidecar_keeps_policy_while_away_and_catches_up() -> None:
    plane, server, port = await _controller()
    side = FakeSidecarRegistry()
    policies: list[dict] = []
    client = TelemetryClient(f"127.0.0.1:{port}", side.registry, "sidecar-2", policies.append,
                             interval_s=0.05, backoff_initial_s=0.05, backoff_max_s=0.2, token=TELEMETRY_TOKEN)
    try:
        await client.start()
        await _wait(lambda: client.connected)
        side.traffic(5)
        await _wait(lambda: plane.fleet.summary("large", plane.clock(), 60).requests == 5)
        await server.stop(None)
        await _wait(lambda: not client.connected)
        assert client.policy is not None and client.policy["router_threshold"] == 0.5  # kept
        side.traffic(7)  # served while the controller is away
        await asyncio.sleep(0.2)
        plane2, server, _ = await _controller(port)  # the controller comes back on the same address
        await _wait(lambda: plane2.fleet.summary("large", plane2.clock(), 60).requests == 7, timeout=8)
        await asyncio.sleep(0.2)
        assert plane2.fleet.summary("large", plane2.clock(), 60).requests == 7  # not double counted
    finally:
        await client.stop()
        await server.stop(None)


@pytest.fixture
async def api():
    plane = ControlPlane(parse_config(CONFIG))
    from aiohttp.test_utils import TestServer

    server = TestServer(build_app(plane, TOKEN), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(str(server.make_url("/")),
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        yield plane, s
    await server.close()


async def test_api_requires_the_token(api) -> None:
    plane, s = api
    async with s.get("/api/v1/fleet", headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"
    async with s.get("/healthz", headers={"Authorization": ""}) as r:
        assert r.status == 200 and await r.text() == "ok"


async def test_api_views_and_actions(api) -> None:
    plane, s = api
    async with s.get("/api/v1/fleet") as r:
        body = await r.json()
    assert {t["name"] for t in body["tiers"]} == {"small", "large"}
    assert body["router_threshold"] == 0.5 and body["autoscaling_paused"] is False
    large = next(t for t in body["tiers"] if t["name"] == "large")
    assert {"replicas_desired", "replicas_ready", "min", "max", "pinned", "routing_share", "ttft_p95_ms",
            "slo_ttft_p95_ms", "queue", "kv_cache_usage", "spec_acceptance", "dollars_per_hour", "replicas"} <= set(large)
    async with s.post("/api/v1/autoscaling/pause", json={}) as r:
        assert (await r.json()) == {"autoscaling_paused": True}
    assert plane.autoscaler.paused
    async with s.post("/api/v1/autoscaling/resume") as r:
        assert (await r.json()) == {"autoscaling_paused": False}
    async with s.post("/api/v1/tiers/large/pin", json={"min": 2, "max": 4}) as r:
        tier = await r.json()
    assert tier["pinned"] and (tier["min"], tier["max"]) == (2, 4)
    async with s.post("/api/v1/tiers/large/pin", json={"min": None, "max": None}) as r:
        assert (await r.json())["pinned"] is False
    async with s.post("/api/v1/router/threshold", json={"threshold": 0.3}) as r:
        assert (await r.json()) == {"router_threshold": 0.3}
    assert plane.policy["router_threshold"] == 0.3
    async with s.get("/api/v1/decisions") as r:
        assert (await r.json()) == {"decisions": []}
    async with s.get("/api/v1/alerts") as r:
        assert (await r.json()) == {"alerts": []}
    async with s.get("/metrics") as r:
        text = await r.text()
    assert "thrifty_controller_sidecars" in text and "thrifty_controller_autoscaling_paused 0.0" in text


@pytest.mark.parametrize("path,body,status", [
    ("/api/v1/tiers/nope/pin", {"min": 1, "max": 2}, 404),
    ("/api/v1/tiers/large/pin", {"min": 3, "max": 2}, 400),
    ("/api/v1/tiers/large/pin", {"min": 1}, 400),
    ("/api/v1/tiers/large/pin", {"min": "1", "max": 2}, 400),
    ("/api/v1/router/threshold", {"threshold": 1.5}, 400),
    ("/api/v1/router/threshold", [1], 400),
])
async def test_api_bad_input_is_a_clear_error(api, path, body, status) -> None:
    _, s = api
    async with s.post(path, json=body) as r:
        assert r.status == status
        err = (await r.json())["error"]
        assert err["message"] and err["type"]


async def test_api_rejects_malformed_json(api) -> None:
    _, s = api
    async with s.post("/api/v1/router/threshold", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400 and "JSON" in (await r.json())["error"]["message"]


async def test_tick_scales_and_logs_decisions_without_kube() -> None:
    plane = ControlPlane(parse_config(CONFIG))
    from thrifty.wire.stats import ReplicaStats, StatsWindow, TierStats

    now = 1000.0
    for i in range(6):
        w = StatsWindow(now - 60 + i * 10, now - 50 + i * 10, [TierStats(
            "large", requests=100, input_tokens=100_000, output_tokens=20_000,
            replicas=[ReplicaStats(f"http://r{j}", waiting=40, running=64) for j in range(2)])])
        plane.ingest("s", w)
    records = await plane.tick(now)
    assert records and records[0].decision.tier == "large" and records[0].decision.to_replicas > 2
    assert records[0].applied is False  # no Kubernetes: decided, logged, not applied
    assert plane.decisions_json()["decisions"][0]["to"] == records[0].decision.to_replicas
