"""The cost levers in front of the real vLLM CPU engine (SmolLM2-135M), driven by the openai SDK.

The engine serves two names (SmolLM2-135M-Instruct and the alias gpt-4o-mini), so two
tiers can point at the one real engine: the sidecar rewrites `model` to the chosen
tier's, and its per-tier request counters say which tier answered. The real MiniLM embedder,
the shipped router artifact and the shipped verifier are used.
"""

from __future__ import annotations

import re
import time
import urllib.request

import openai
import pytest
from prometheus_client import CollectorRegistry

from thrifty.config import parse_config
from thrifty.proxy.app import Sidecar, bound_port, serve
from thrifty.proxy.levers.cost_levers import CostLevers

pytestmark = pytest.mark.engine


def _metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE))


def _engine_requests(url: str) -> float:
    """Finished requests, once the engine is idle and its counter has settled: the engine
    is shared by the session, and vLLM updates its counters a moment after answering."""
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        busy = _metric_sum(text, "vllm:num_requests_running") + _metric_sum(text, "vllm:num_requests_waiting")
        done = _metric_sum(text, "vllm:request_success_total")
        if busy == 0 and done == last:
            return done
        last = done
        time.sleep(0.5)
    raise TimeoutError("the engine's request counter did not settle")


async def test_cache_hit_skips_engine_and_router_picks_tier(vllm_engine) -> None:
    config = parse_config({
        "tiers": [
            {"name": "small", "model": vllm_engine.model, "engine": {"kind": "external"}, "price": {"input_per_1m": 0.1, "output_per_1m": 0.2},
             "replicas": {"count": 1, "urls": [vllm_engine.url]}},
            {"name": "large", "model": "gpt-4o-mini", "engine": {"kind": "external"}, "price": {"input_per_1m": 5, "output_per_1m": 15},
             "replicas": {"count": 1, "urls": [vllm_engine.url]}},
        ],
        "quality": {"enabled": False},  # its random shadow and control draws would add engine requests to the counts
    })
    sidecar = Sidecar(config)
    sidecar.set_levers(CostLevers(config, sidecar.metrics.registry))
    runner = await serve(sidecar, "127.0.0.1", 0)
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{bound_port(runner)}/v1", api_key="tenant-key", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Name a primary colour."}]
        before = _engine_requests(vllm_engine.url)
        first = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=8, temperature=0)
        after_first = _engine_requests(vllm_engine.url)
        second = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=8, temperature=0)
        assert after_first == before + 1
        assert _engine_requests(vllm_engine.url) == after_first  # served from the exact cache
        assert second.choices[0].message.content == first.choices[0].message.content

        registry: CollectorRegistry = sidecar.metrics.registry

        def served(tier: str) -> float:
            return registry.get_sample_value("thrifty_requests_total", {"tier": tier, "outcome": "ok", "cache": "miss"}) or 0.0

        sidecar.levers.apply_policy({"router_threshold": 0.0})  # every prompt is "easy enough"
        small_before, large_before = served("small"), served("large")
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say yes."}], max_tokens=4, temperature=0)
        assert served("small") == small_before + 1 and served("large") == large_before
        sidecar.levers.apply_policy({"router_threshold": 1.0})  # nothing is
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Say no."}], max_tokens=4, temperature=0)
        assert served("large") == large_before + 1
        assert registry.get_sample_value("thrifty_cache_lookups_total", {"kind": "exact", "result": "hit"}) == 1
        assert registry.get_sample_value("thrifty_router_decisions_total", {"tier": "small", "reason": "model"}) >= 1
    finally:
        await runner.cleanup()
        await sidecar.levers.aclose()
