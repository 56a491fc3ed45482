"""The Responses API and `service_tier` through the sidecar to the real vLLM CPU engine
(SmolLM2-135M), with the official SDK: the engine's own shapes, relayed with the client's
model name, accounted; `previous_response_id` answered by the engine (vLLM keeps no responses
unless started with VLLM_ENABLE_RESPONSES_API_STORE=1)."""

from __future__ import annotations

import openai
import pytest

from tests.unit import openai_schema as schema
from thrifty.config import parse_config
from thrifty.proxy.app import Sidecar, bound_port, serve

pytestmark = pytest.mark.engine


async def test_responses_and_service_tier_through_the_sidecar(vllm_engine) -> None:
    config = parse_config({"tiers": [{"name": "small", "model": vllm_engine.model, "aliases": ["gpt-4o"],
                                      "engine": {"kind": "external"}, "price": {"input_per_1m": 0.1, "output_per_1m": 0.2},
                                      "replicas": {"count": 1, "urls": [vllm_engine.url]}}],
                           "router": {"enabled": False}, "quality": {"enabled": False}})
    sidecar = Sidecar(config)
    listener = await serve(sidecar, "127.0.0.1", 0)
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{bound_port(listener)}/v1", api_key="k",
                                    max_retries=0, timeout=120)
        raw = await client.responses.with_raw_response.create(model="gpt-4o", input="Name a colour.", max_output_tokens=16)
        assert raw.headers["x-thrifty-tier"] == "small"
        first = raw.parse()
        schema.check_response(first.model_dump(), model="gpt-4o")
        assert first.usage.input_tokens > 0 and 0 < first.usage.output_tokens <= 16
        # vLLM keeps responses (for previous_response_id and retrieve) only with
        # VLLM_ENABLE_RESPONSES_API_STORE=1; without it the engine's own 404 reaches the client intact
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.responses.create(model="gpt-4o", input="And another one?", max_output_tokens=16,
                                          previous_response_id=first.id)
        schema.check_error(unknown.value.body if "error" in (unknown.value.body or {}) else {"error": unknown.value.body})
        kinds, completed = [], None
        stream = await client.responses.create(model="gpt-4o", input="Say hi.", max_output_tokens=8, stream=True)
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.completed":
                completed = event.response
        assert kinds[0] == "response.created" and completed is not None and completed.model == "gpt-4o"
        chat = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=4, service_tier="priority")
        assert chat.choices[0].message.content is not None
        reg = sidecar.metrics.registry
        served = first.usage.output_tokens + completed.usage.output_tokens
        assert reg.get_sample_value("thrifty_tokens_total", {"tier": "small", "kind": "output"}) == served + chat.usage.completion_tokens
        assert reg.get_sample_value("thrifty_lane_requests_total", {"lane": "priority", "outcome": "ok"}) == 1
    finally:
        await listener.cleanup()
