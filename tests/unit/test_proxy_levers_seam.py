"""The real cost levers (exact cache only: no model) plugged into the sidecar through the Levers seam."""

from __future__ import annotations

import aiohttp
import pytest

from tests.unit.proxy_harness import config_for, stack
from thrifty.proxy.levers.cost_levers import CostLevers
from thrifty.proxy.observe.telemetry import read_registry, window_between
from thrifty.sim.stub_backend import StubBehaviour

CHAT = {"model": "small-model", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "cache me"}]}


async def test_exact_cache_hit_served_without_upstream_and_accounted() -> None:
    cache_only = {"router": {"enabled": False}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}}}
    async with stack([StubBehaviour()], **cache_only) as s, aiohttp.ClientSession(
            headers={"Authorization": "Bearer key-a"}) as http:
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
        # The two hits' baseline is counted apart, so the controller's cost index can price
        # only what the engine served: the first request's baseline is the rest.
        baseline = reg.get_sample_value("thrifty_baseline_cost_dollars_total", {"tier": "small"})
        hits = reg.get_sample_value("thrifty_cache_baseline_cost_dollars_total", {"tier": "small"})
        assert 0 < hits < baseline and hits == pytest.approx(2 / 3 * baseline)
        [small] = [t for t in window_between(read_registry(reg), {}, 0.0, 1.0, 1, False).tiers if t.tier == "small"]
        assert small.cache_baseline_dollars == pytest.approx(hits) and small.baseline_dollars == pytest.approx(baseline)


async def test_cache_switched_off_by_header_or_policy_goes_upstream_as_bypass() -> None:
    """The levers own the cache policy: the sidecar passes the header and the controller's policy through."""
    KEY = {"Authorization": "Bearer seam-test"}  # anonymous requests are not cached by default
    cache_only = {"router": {"enabled": False}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}}}
    async with stack([StubBehaviour()], **cache_only) as s, aiohttp.ClientSession() as http:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **cache_only),
                                        s.sidecar.metrics.registry))
        async with http.post(s.url + "/v1/chat/completions", json=CHAT, headers=KEY) as resp:
            assert resp.status == 200  # stored
        async with http.post(s.url + "/v1/chat/completions", json=CHAT, headers={**KEY, "X-Thrifty-Cache": "bypass"}) as resp:
            assert resp.status == 200 and "X-Thrifty-Cache" not in resp.headers
        s.sidecar.apply_policy({"cache_enabled": False})
        async with http.post(s.url + "/v1/chat/completions", json=CHAT, headers=KEY) as resp:
            assert resp.status == 200 and "X-Thrifty-Cache" not in resp.headers
        s.sidecar.apply_policy({"cache_enabled": True})
        async with http.post(s.url + "/v1/chat/completions", json=CHAT, headers=KEY) as resp:
            assert resp.headers["X-Thrifty-Cache"] == "exact"
        assert s.backends[0].stats.requests == 3
        reg = s.sidecar.metrics.registry
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "bypass"}) == 2
        assert reg.get_sample_value("thrifty_cache_lookups_total", {"kind": "exact", "result": "skipped"}) is None


async def test_unusable_router_artifact_is_a_one_line_config_error(tmp_path) -> None:
    """A missing or stale artifact stops the sidecar with one line naming it, not a traceback."""
    import pytest
    from prometheus_client import CollectorRegistry

    from thrifty.config import ConfigError
    from thrifty.proxy.main import build_levers

    stale = tmp_path / "router.npz"
    stale.write_bytes(b"not an npz")
    for artifact in (stale, tmp_path / "missing.npz"):
        config = config_for({"small": ["http://127.0.0.1:9"], "large": ["http://127.0.0.1:9"]},
                            router={"enabled": True, "artifact": str(artifact)})
        with pytest.raises(ConfigError) as info:
            await build_levers(config, CollectorRegistry())
        assert artifact.name in str(info.value) and "\n" not in str(info.value)


def test_corrupt_artifacts_name_their_file(tmp_path) -> None:
    import pytest

    from thrifty.proxy.levers.router import RouterModel
    from thrifty.proxy.levers.verifier import Verifier

    for loader, name in ((RouterModel.load, "router.npz"), (Verifier.load, "verifier.npz")):
        corrupt = tmp_path / name
        corrupt.write_bytes(b"PK\x03\x04 truncated")
        with pytest.raises(ValueError, match=name):
            loader(corrupt)
