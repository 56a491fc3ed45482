"""The Responses API through the sidecar's request path, with the official SDK: routed, admitted
and accounted like chat, the client's model name on every answer, and a conversation's
follow-ups (`previous_response_id`) and retrievals kept on the replica that holds it.

Engine: the simulated vLLM replica (`SimServer.instant`, the stub of the sidecar tests), which
serves `/v1/responses` in vLLM's shapes and keeps responses per replica as vLLM does.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from tests.unit import openai_schema as schema
from tests.unit.proxy_harness import stack
from thrifty.proxy.levers.protocol import NoLevers
from thrifty.sim.stub_backend import StubBehaviour


class CheapestRouter(NoLevers):
    """Routes every request to the cheapest tier it may use."""

    async def route(self, ctx, tiers):  # type: ignore[no-untyped-def]
        return tiers[0]


def tokens(s, tier: str, kind: str) -> float:  # type: ignore[no-untyped-def]
    return s.sidecar.metrics.registry.get_sample_value("thrifty_tokens_total", {"tier": tier, "kind": kind}) or 0.0


async def test_routed_admitted_accounted_with_the_clients_model_name() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], levers=CheapestRouter()) as s:
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="sk-a")
        raw = await client.responses.with_raw_response.create(model="alias-large", input="What is 2 + 2?")
        assert raw.headers["x-thrifty-tier"] == "small"  # routed down like chat
        body = json.loads(raw.http_response.content)
        schema.check_response(body, model="alias-large")
        response = raw.parse()
        assert response.output_text and response.usage.input_tokens > 0
        assert tokens(s, "small", "input") == response.usage.input_tokens
        assert tokens(s, "small", "output") == response.usage.output_tokens
        reg = s.sidecar.metrics.registry
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "miss"}) == 1
        assert reg.get_sample_value("thrifty_savings_dollars_total", {"lever": "routing"}) > 0


async def test_stream_is_relayed_and_accounted() -> None:
    async with stack([StubBehaviour()], tiers=["small"]) as s:
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="sk-a")
        stream = await client.responses.create(model="alias-small", input="stream please", stream=True)
        kinds, completed = [], None
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.completed":
                completed = event.response
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.output_text.delta" in kinds
        assert completed is not None and completed.model == "alias-small"
        schema.check_response(completed.model_dump(), model="alias-small")
        assert tokens(s, "small", "output") == completed.usage.output_tokens > 0
        # the streamed response is a conversation the sidecar can continue
        follow = await client.responses.create(model="alias-small", input="more", previous_response_id=completed.id)
        assert follow.usage.input_tokens > completed.usage.input_tokens


async def test_conversation_stays_on_the_replica_that_holds_it() -> None:
    async with stack([StubBehaviour() for _ in range(3)], tiers=["small"]) as s:
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="sk-a")
        first = await client.responses.create(model="alias-small", input="Remember the number 7.")
        holder = [b for b in s.backends if b.stats.requests == 1]
        assert len(holder) == 1
        previous = first
        for turn in range(4):
            previous = await client.responses.create(model="alias-small", input=f"turn {turn}",
                                                     previous_response_id=previous.id)
        assert holder[0].stats.requests == 5  # every follow-up reached it, whatever the balancer would pick
        again = await client.responses.retrieve(first.id)  # GET: also to the holder
        assert again.id == first.id
        # the holder goes away: a follow-up is a clear 404, not a hang or another replica's confusion
        await holder[0].kill()
        replica = next(r for r in s.sidecar.pool.all() if r.url == holder[0].url)
        for _ in range(200):
            if not replica.healthy:
                break
            await asyncio.sleep(0.01)
        assert not replica.healthy
        with pytest.raises(openai.NotFoundError) as gone:
            await client.responses.create(model="alias-small", input="still there?", previous_response_id=previous.id)
        assert gone.value.body["code"] == "previous_response_not_found"


async def test_bad_input_is_an_openai_shaped_400() -> None:
    async with stack([StubBehaviour()], tiers=["small"]) as s, aiohttp.ClientSession() as http:
        for body, param in (({"model": "alias-small"}, "input"), ({"model": "alias-small", "input": 3}, "input"),
                            ({"model": "alias-small", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
                            ({"model": "alias-small", "input": "x", "previous_response_id": 5}, "previous_response_id")):
            async with http.post(s.url + "/v1/responses", json=body) as resp:
                assert resp.status == 400
                error = await resp.json()
                schema.check_error(error)
                assert error["error"]["param"] == param
        assert s.backends[0].stats.requests == 0
