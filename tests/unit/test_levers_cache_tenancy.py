"""Issue 17, "Cache tenancy": each finding replayed (HTTP through the real sidecar with the
real exact cache, or the real CostLevers with the hashed encoder) and now refused."""

from __future__ import annotations

import aiohttp
import pytest

from tests.unit.proxy_harness import config_for, stack
from tests.unit.test_levers_cost_levers import answer, ctx, make
from thrifty.config import ConfigError, parse_config
from thrifty.proxy.levers.cost_levers import CostLevers
from thrifty.proxy.request.tenant import ANONYMOUS, tenant_of
from thrifty.config import TenancySettings
from thrifty.sim.stub_backend import StubBehaviour

CHAT = {"model": "small-model", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "my balance?"}]}


def cache_cfg(**tenancy) -> dict:
    return {"router": {"enabled": False},
            "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}, "tenancy": tenancy}}


async def _post(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    async with http.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        assert resp.status == 200
        return resp.headers.get("x-thrifty-cache", "")


async def _served_upstream(tenancy: dict, first: dict[str, str], second: dict[str, str]) -> int:
    """Send `first` then `second`; how many reached the replica (2: no shared answer)."""
    cfg = cache_cfg(**tenancy)
    async with stack([StubBehaviour()], **cfg) as s, aiohttp.ClientSession() as http:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **cfg),
                                        s.sidecar.metrics.registry))
        await _post(http, s.url, first)
        await _post(http, s.url, second)
        return s.backends[0].stats.requests


async def test_tenant_header_from_any_client_does_not_override_the_key() -> None:
    """Finding: key B with `X-Thrifty-Tenant: team` got key A's cached answer."""
    a = {"Authorization": "Bearer key-A", "X-Thrifty-Tenant": "team"}
    b = {"Authorization": "Bearer key-B", "X-Thrifty-Tenant": "team"}
    assert await _served_upstream({}, a, b) == 2
    # Enabled, but the client is not one of the trusted proxy networks: still ignored.
    assert await _served_upstream({"trust_tenant_header": True, "trusted_proxies": ["10.0.0.0/8"]}, a, b) == 2
    # Enabled for the gateway's network (loopback here): the header names the tenant.
    assert await _served_upstream({"trust_tenant_header": True, "trusted_proxies": ["127.0.0.0/8"]}, a, b) == 1


async def test_anonymous_clients_do_not_share_answers_by_default() -> None:
    """Finding: every client without Authorization shared one tenant."""
    assert await _served_upstream({}, {}, {}) == 2
    assert await _served_upstream({"anonymous": "shared"}, {}, {}) == 1  # the operator's explicit choice
    assert await _served_upstream({"anonymous": "per_client"}, {}, {}) == 1  # same client address


def test_per_client_tenants_follow_the_address() -> None:
    per_client = TenancySettings(anonymous="per_client")
    assert tenant_of(None, None, "10.1.2.3", per_client) == tenant_of(None, None, "10.1.2.3", per_client)
    assert tenant_of(None, None, "10.1.2.3", per_client) != tenant_of(None, None, "10.1.2.4", per_client)
    assert tenant_of(None, None, None, per_client) == ANONYMOUS  # address unknown: no caching
    assert tenant_of(None, None, "10.1.2.3") == ANONYMOUS  # default: no_cache
    trusted = TenancySettings(trust_tenant_header=True, trusted_proxies=["10.0.0.0/8"])
    assert tenant_of(None, "team", "::ffff:10.9.9.9", trusted) == "hdr-team"  # IPv4-mapped proxy address
    assert tenant_of(None, "team", "11.0.0.1", trusted) == ANONYMOUS


async def test_anonymous_requests_are_not_cached_in_the_levers() -> None:
    from tests.unit.test_levers_cost_levers import CountingEncoder

    levers, reg = make(CountingEncoder(), None, router=False)
    first = ctx("What is my account balance?", tenant=ANONYMOUS)
    await levers.lookup(first)
    await levers.store(first, answer("42"))
    assert first.cache_result == "bypass" and len(levers.exact) == 0 and len(levers.semantic) == 0


async def test_sampled_requests_skip_the_semantic_cache_unless_opted_in() -> None:
    """Finding: temperature 1, no seed, was replayed from the semantic cache."""
    from tests.unit.test_levers_cost_levers import CountingEncoder

    levers, _ = make(CountingEncoder(), None, router=False, sampled_tiers=[])
    first = ctx("How do I reset my password?", temperature=1.0)
    await levers.lookup(first)
    await levers.store(first, answer("Click 'forgot password'."))
    assert len(levers.semantic) == 0
    assert await levers.lookup(ctx("how do I reset my password?", temperature=1.0)) is None
    seeded = ctx("How do I reset my password?", temperature=1.0)
    seeded.body["seed"] = 7  # deterministic: allowed
    await levers.lookup(seeded)
    await levers.store(seeded, answer("Click 'forgot password'."))
    reworded = ctx("how do I reset my password?", temperature=1.0)
    reworded.body["seed"] = 7
    hit = await levers.lookup(reworded)
    assert hit is not None and hit.kind == "semantic"
    # Opted in for the tier the client asked for ("big" -> large): sampled requests may hit.
    opted, _ = make(CountingEncoder(), None, router=False, sampled_tiers=["large"])
    first = ctx("How do I reset my password?", temperature=1.0)
    await opted.lookup(first)
    await opted.store(first, answer("Click 'forgot password'."))
    assert (await opted.lookup(ctx("how do I reset my password?", temperature=1.0))).kind == "semantic"


@pytest.mark.parametrize("reworded", [False, True])
async def test_a_forced_tier_answer_is_never_served_to_plain_requests(reworded: bool) -> None:
    """Finding: an answer obtained with `X-Thrifty-Tier: small` was later served to plain requests."""
    from tests.unit.test_levers_cost_levers import CountingEncoder

    levers, _ = make(CountingEncoder(), None, router=False)
    forced = ctx("Summarise the quarterly report", headers={"x-thrifty-tier": "small"})
    await levers.lookup(forced)
    await levers.route(forced, ["small", "large"])
    assert forced.tier == "small"
    await levers.store(forced, answer("small-model summary"))
    text = "summarise the quarterly report" if reworded else "Summarise the quarterly report"
    assert await levers.lookup(ctx(text)) is None
    again = await levers.lookup(ctx(text, headers={"x-thrifty-tier": "small"}))
    assert again is not None and again.kind == ("semantic" if reworded else "exact")


@pytest.mark.parametrize("cache, field", [
    ({"tenancy": {"trust_tenant_header": True}}, "cache.tenancy"),
    ({"tenancy": {"trusted_proxies": ["not-a-network"]}}, "cache.tenancy.trusted_proxies[0]"),
    ({"tenancy": {"anonymous": "everyone"}}, "cache.tenancy.anonymous"),
    ({"semantic": {"sampled_tiers": ["nope"]}}, "sampled_tiers"),
])
def test_tenancy_config_errors_name_the_field(cache, field) -> None:
    data = {"tiers": [{"name": "small", "model": "s", "price": {"gpu_hour": 1}}], "cache": cache}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert field in str(err.value) and "\n" not in str(err.value)
