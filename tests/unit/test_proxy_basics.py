"""The sidecar's request path against stub replicas on loopback: relay, usage, accounting, metrics."""

from __future__ import annotations

import json

import aiohttp

from tests.unit.proxy_harness import stack
from thrifty.sim.stub_backend import StubBehaviour

CHAT = {"model": "small-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


async def _sse_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    raw = await resp.read()
    return [e for e in raw.split(b"\n\n") if e]


async def test_chat_relayed_and_accounted() -> None:
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert resp.headers["X-Thrifty-Tier"] == "small"
        assert body["choices"][0]["message"]["content"].startswith("w0")
        async with http.get(s.url + "/metrics") as resp:
            text = await resp.text()
        assert 'thrifty_requests_total{cache="miss",outcome="ok",tier="small"} 1.0' in text
        assert 'thrifty_tokens_total{kind="output",tier="small"} 4.0' in text
        assert "thrifty_cost_dollars_total" in text and "thrifty_replica_up" in text


async def test_alias_maps_to_tier_and_unknown_model_is_404() -> None:
    async with stack([StubBehaviour()], tiers=["small"]) as s, aiohttp.ClientSession() as http:
        async with http.post(s.url + "/v1/chat/completions", json={**CHAT, "model": "alias-small"}) as resp:
            assert resp.status == 200
        async with http.post(s.url + "/v1/chat/completions", json={**CHAT, "model": "nope"}) as resp:
            assert resp.status == 404
            err = await resp.json()
        assert err["error"]["code"] == "model_not_found" and err["error"]["param"] == "model"


async def test_stream_strips_injected_usage_but_accounts_it() -> None:
    async with stack([StubBehaviour(chunks=3)]) as s, aiohttp.ClientSession() as http:
        s.backends[0].stats.keep_bodies = True
        async with http.post(s.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            events = await _sse_events(resp)
        assert s.backends[0].stats.bodies[0]["stream_options"] == {"include_usage": True}
        assert events[-1] == b"data: [DONE]"
        assert not any(b'"usage"' in e for e in events), "client did not ask for usage"
        metrics = s.sidecar.metrics.registry.get_sample_value("thrifty_tokens_total", {"tier": "small", "kind": "output"})
        assert metrics == 3.0


async def test_stream_keeps_usage_when_asked() -> None:
    async with stack([StubBehaviour(chunks=2)]) as s, aiohttp.ClientSession() as http:
        req = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(s.url + "/v1/chat/completions", json=req) as resp:
            events = await _sse_events(resp)
        usage_events = [json.loads(e[6:]) for e in events if b'"usage"' in e]
        assert usage_events and usage_events[-1]["usage"]["completion_tokens"] == 2


async def test_models_listed_from_config_and_unknown_paths_forwarded() -> None:
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        async with http.get(s.url + "/v1/models") as resp:
            ids = {m["id"] for m in (await resp.json())["data"]}
        assert {"small-model", "alias-small"} <= ids
        async with http.post(s.url + "/tokenize?x=1", data=b"abc") as resp:
            echo = await resp.json()
        assert echo == {"path": "/tokenize?x=1", "method": "POST", "body_bytes": 3, "backend": "b0"}


async def test_upstream_error_status_and_body_reach_client() -> None:
    async with stack([StubBehaviour(fail_status=400)]) as s, aiohttp.ClientSession() as http:
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 400
            err = await resp.json()
        assert err["error"]["message"] == "stub failure"


async def test_baseline_cost_counts_the_expensive_tier() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"]) as s, aiohttp.ClientSession() as http:
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
        reg = s.sidecar.metrics.registry
        cost = reg.get_sample_value("thrifty_cost_dollars_total", {"tier": "small"})
        baseline = reg.get_sample_value("thrifty_baseline_cost_dollars_total", {"tier": "small"})
        assert 0 < cost < baseline
        assert abs(baseline / cost - 4.0) < 1e-6  # the large tier's prices are 4x in the harness
        assert reg.get_sample_value("thrifty_savings_dollars_total", {"lever": "routing"}) > 0
