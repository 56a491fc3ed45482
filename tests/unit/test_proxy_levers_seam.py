"""The real cost levers (exact cache only: no model) plugged into the sidecar through the Levers seam."""

from __future__ import annotations

import aiohttp

from tests.unit.proxy_harness import config_for, stack
from thrifty.proxy.cost_levers import CostLevers
from thrifty.proxy.stub_backend import StubBehaviour

CHAT = {"model": "small-model", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "cache me"}]}


async def test_exact_cache_hit_served_without_upstream_and_accounted() -> None:
    cache_only = {"router": {"enabled": False}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}}}
    async with stack([StubBehaviour()], **cache_only) as s, aiohttp.ClientSession() as http:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **cache_only),
                                        s.sidecar.metrics.registry))
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            first = await resp.json()
        async with http.post(s.url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            second = await resp.json()
        assert s.backends[0].stats.requests == 1
        assert second["choices"] == first["choices"]
        async with http.post(s.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            events = [e for e in (await resp.read()).split(b"\n\n") if e]
        assert s.backends[0].stats.requests == 1 and events[-1] == b"data: [DONE]"
        reg = s.sidecar.metrics.registry
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "exact"}) == 2
        assert reg.get_sample_value("thrifty_savings_dollars_total", {"lever": "cache_exact"}) > 0
