"""The OpenAI surface as clients see it through the sidecar: schema-conformant answers
(fresh ids on cache hits, the client's model name, streams as the engine sends them),
validation no stricter than vLLM, and a seeded sweep of malformed bodies.

Engines: the simulated vLLM replica (`thrifty.sim`, the engine `thrifty up --engine sim`
runs) and `StubBackend` (a fake) where a test needs an engine that takes anything.
Schema checks: tests/unit/openai_schema.py says which parts of the official schema.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai

from tests.unit import openai_schema as schema
from tests.unit.proxy_harness import config_for, stack
from thrifty.proxy.app import Sidecar, bound_port, serve
from thrifty.proxy.http.conform import StreamEditor
from thrifty.proxy.levers.cost_levers import CostLevers
from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder
from thrifty.sim.server import running_sim_server
from thrifty.sim.stub_backend import StubBehaviour

MSG = [{"role": "user", "content": "Say hello"}]
CACHES = {"router": {"enabled": False}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": False}}}
JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def sim_sidecar() -> AsyncIterator[str]:
    """A sidecar (exact cache on) in front of one simulated replica serving `small-model` / `alias-small`."""
    async with running_sim_server("a100-llama3-8b", served_model_names=["small-model", "alias-small"]) as engine:
        config = config_for({"small": [engine]}, **CACHES)
        sidecar = Sidecar(config, scrape_interval_s=0.1)
        sidecar.set_levers(CostLevers(config, sidecar.metrics.registry, embedder=Embedder(HashedNgramEncoder(64))))
        listener = await serve(sidecar, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{bound_port(listener)}"
        finally:
            await listener.cleanup()


async def sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[dict[str, str], list[Any]]:
    """Raw SSE events of a streamed answer (decoded JSON, or the literal "[DONE]")."""
    async with http.post(url, json=body, headers={"Authorization": "Bearer sk-a"}) as resp:
        assert resp.status == 200, await resp.text()
        raw = await resp.read()
        headers = {k.lower(): v for k, v in resp.headers.items()}
    events = [e[6:] for e in raw.decode().split("\n\n") if e]
    return headers, [e if e == "[DONE]" else json.loads(e) for e in events]


async def test_sdk_answers_conform_through_the_sim_engine() -> None:
    async with sim_sidecar() as url, aiohttp.ClientSession() as http:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-a", max_retries=0)
        chat = await client.chat.completions.with_raw_response.create(model="alias-small", messages=MSG, max_tokens=5,
                                                                     n=2, logprobs=True, top_logprobs=1)
        schema.check_chat_completion(json.loads(chat.content), model="alias-small")
        assert chat.headers["x-thrifty-tier"] == "small" and chat.headers["x-request-id"]
        comp = await client.completions.with_raw_response.create(model="alias-small", prompt="Say", max_tokens=4)
        schema.check_completion(json.loads(comp.content), model="alias-small")

        # streams: no usage the client did not ask for (the sim sends "usage": null once asked), a finish chunk
        for path, chat_kind, body in (("/v1/chat/completions", True, {"messages": MSG}),
                                      ("/v1/completions", False, {"prompt": "Say"})):
            _, events = await sse(http, url + path, {"model": "alias-small", "max_tokens": 4, "stream": True, **body})
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            for c in chunks:
                schema.check_chunk(c, chat=chat_kind, model="alias-small")
            assert any(ch.get("finish_reason") for c in chunks for ch in c["choices"])
            _, events = await sse(http, url + path, {"model": "alias-small", "max_tokens": 4, "stream": True,
                                                     "stream_options": {"include_usage": True}, **body})
            for c in events[:-1]:
                schema.check_chunk(c, chat=chat_kind, model="alias-small", usage_allowed=True)
            assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] >= 1

        # a cache hit: a new completion (fresh id and created), the client's model, the tier that made it
        first = await client.chat.completions.with_raw_response.create(model="alias-small", messages=MSG, max_tokens=6,
                                                                      temperature=0)
        again = await client.chat.completions.with_raw_response.create(model="alias-small", messages=MSG, max_tokens=6,
                                                                      temperature=0)
        a, b = json.loads(first.content), json.loads(again.content)
        assert again.headers["x-thrifty-cache"] == "exact" and again.headers["x-thrifty-tier"] == "small"
        schema.check_chat_completion(b, model="alias-small")
        assert b["id"] != a["id"] and b["id"].startswith("chatcmpl-") and b["created"] >= a["created"]
        assert b["choices"] == a["choices"] and "thrifty_tier" not in b
        headers, events = await sse(http, url + "/v1/chat/completions", {
            "model": "alias-small", "messages": MSG, "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        assert headers["x-thrifty-cache"] == "exact"
        chunks = events[:-1]
        for c in chunks:
            schema.check_chunk(c, chat=True, model="alias-small", usage_allowed=True)
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] not in (a["id"], b["id"])
        finish = [ch for c in chunks for ch in c["choices"] if ch["finish_reason"]]
        assert finish and finish[0]["finish_reason"] == a["choices"][0]["finish_reason"] and "stop_reason" in finish[0]
        assert isinstance(chunks[-1]["usage"]["prompt_tokens_details"], dict)

        # models: list and retrieve every alias; an unknown id is an OpenAI-shaped 404
        listed = await client.models.list()
        for m in listed.data:
            got = await client.models.with_raw_response.retrieve(m.id)
            schema.check_model(json.loads(got.content))
            assert got.parse().id == m.id
        try:
            await client.models.retrieve("org/no-such-model")
            raise AssertionError("unknown model retrieved")
        except openai.NotFoundError as exc:
            schema.check_error(exc.response.json())
        # the sim engine (generative) has no embeddings route: a clear 404, not its "Not Found" wrapped
        try:
            await client.embeddings.create(model="alias-small", input="hi")
            raise AssertionError("embeddings answered")
        except openai.NotFoundError as exc:
            schema.check_error(exc.response.json())
            assert "does not serve embeddings" in exc.response.json()["error"]["message"]

        # errors in OpenAI's shape
        try:
            await client.chat.completions.create(model="gpt-nope", messages=MSG)
            raise AssertionError("unknown model answered")
        except openai.NotFoundError as exc:
            schema.check_error(exc.response.json())
        await client.close()


def test_stream_editor_strips_only_what_the_sidecar_added() -> None:
    """vLLM with include_usage moves system_fingerprint from the finish chunk to the usage chunk:
    the client that did not ask for usage gets the finish chunk as vLLM sends it without."""
    head = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"SmolLM2"'
    events = (head + b',"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
              + head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'
              + head + b',"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},'
              b'"system_fingerprint":"fp_1"}\n\ndata: [DONE]\n\n')
    editor = StreamEditor("gpt-4o", strip_added_usage=True)
    out = editor.feed(events)
    alias = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o"'
    assert out == (alias + b',"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}\n\n'
                   + alias + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
                   b'"system_fingerprint":"fp_1"}\n\ndata: [DONE]\n\n')
    assert editor.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    # the client asked for usage: every byte is the engine's, bar the model name
    kept = StreamEditor("SmolLM2", strip_added_usage=False)
    assert kept.feed(events) == events and kept.usage is not None


# --- validation: never stricter than vLLM --------------------------------------------------
LAX_OK = [  # vLLM (pydantic lax mode) answers these 200
    {"n": 1.0}, {"max_tokens": 2.0}, {"max_completion_tokens": 2.0}, {"logprobs": 1.0, "top_logprobs": 2.0},
    {"temperature": "0.5"}, {"max_tokens": "3"}, {"stream": "true"}, {"temperature": 2.5},
    {"messages": [{"role": "narrator", "content": "Once"}, {"role": "user", "content": "hi"}]},
]


async def test_lax_values_vllm_accepts_are_accepted() -> None:
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        for extra in LAX_OK:
            body = {"model": "small-model", "messages": [{"role": "user", "content": "hi"}], **extra}
            async with http.post(s.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, (extra, await resp.text())
        async with http.post(s.url + "/v1/completions", json={"model": "small-model", "prompt": "x", "logprobs": 1.0}) as resp:
            assert resp.status == 200
        async with http.post(s.url + "/v1/chat/completions", json={"model": "small-model",
                                                                    "messages": [{"role": {}, "content": "x"}]}) as resp:
            assert resp.status == 400
            schema.check_error(await resp.json())


_VALUES: list[Any] = [None, True, False, 0, -1, 1, 2.0, 1.5, 1e300, -1e300, "", "x", "0.5", "true", [], [1], ["a"], {},
                      {"a": 1}, [[]], [{"role": 1}], "\u0000", "\ud7ff" * 3, 2**70]
_FIELDS = ["model", "messages", "prompt", "input", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "logprobs", "top_logprobs", "stream", "stream_options", "stop", "tools", "tool_choice", "seed",
           "response_format", "user", "messages.0", "messages.0.role", "messages.0.content", "stream_options.include_usage"]


def _mutate(rng: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_FIELDS).split(".")
        value = json.loads(json.dumps(rng.choice(_VALUES)))
        target: Any = body
        for part in path[:-1]:
            if isinstance(target, list) and part.isdigit() and target:
                target = target[0]
            elif isinstance(target, dict):
                target = target.setdefault(part, {})
            else:
                break
        if isinstance(target, dict):
            if rng.random() < 0.15:
                target.pop(path[-1], None)
            else:
                target[path[-1]] = value
        elif isinstance(target, list) and target:
            target[0] = value
    return body


async def test_seeded_sweep_of_malformed_bodies_has_no_5xx() -> None:
    """800 seeded mutations of valid chat/completions/embeddings/responses bodies through the sidecar
    (exact cache on) and a stub engine: every answer is 2xx or an OpenAI-shaped 4xx."""
    rng = random.Random(18)
    bases = [("/v1/chat/completions", {"model": "small-model", "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": 0}),
             ("/v1/completions", {"model": "small-model", "prompt": "hi", "temperature": 0}),
             ("/v1/embeddings", {"model": "small-model", "input": "hi"}),
             ("/v1/responses", {"model": "small-model", "input": [{"role": "user", "content": "hi"}],
                                "service_tier": "flex", "max_output_tokens": 8})]
    statuses: dict[int, int] = {}
    async with stack([StubBehaviour()], **CACHES) as s, aiohttp.ClientSession() as http:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **CACHES),
                                        s.sidecar.metrics.registry, embedder=Embedder(HashedNgramEncoder(64))))
        for i in range(800):
            path, base = bases[i % len(bases)]
            body = _mutate(rng, base)
            async with http.post(s.url + path, data=json.dumps(body), headers=JSON) as resp:
                raw = await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                assert resp.status < 500, (resp.status, body, raw[:300])
                if resp.status >= 400:
                    schema.check_error(json.loads(raw))
    assert statuses.get(200, 0) > 50 and sum(v for k, v in statuses.items() if k >= 400) > 100, statuses


def test_embeddings_go_to_a_pooling_tier_or_404() -> None:
    from thrifty.config import parse_config
    from thrifty.proxy.pipeline import serves_embeddings

    def tier(kind: str, extra: list[str]) -> Any:
        return parse_config({"tiers": [{"name": "t", "model": "m", "engine": {"kind": kind, "extra_args": extra},
                                        "price": {"input_per_1m": 1, "output_per_1m": 1}}]}).tiers[0]

    assert serves_embeddings(tier("vllm", ["--runner", "pooling"])) and serves_embeddings(tier("vllm", ["--task=embed"]))
    assert not serves_embeddings(tier("vllm", [])) and not serves_embeddings(tier("sim", []))
    assert serves_embeddings(tier("external", []))


async def test_tool_calls_and_structured_outputs_are_cached_per_tools() -> None:
    """A cached tool call is never served to a request with other tools (or another response_format)."""
    weather = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    time_fn = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    async with stack([StubBehaviour()], **CACHES) as s:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **CACHES),
                                        s.sidecar.metrics.registry, embedder=Embedder(HashedNgramEncoder(64))))
        client = openai.AsyncOpenAI(base_url=s.url + "/v1", api_key="sk-t", max_retries=0)

        async def ask(**kw: Any) -> tuple[str | None, dict[str, Any]]:
            raw = await client.chat.completions.with_raw_response.create(model="alias-small", messages=MSG, temperature=0, **kw)
            body = json.loads(raw.content)
            schema.check_chat_completion(body, model="alias-small")
            return raw.headers.get("x-thrifty-cache"), body

        assert (await ask(tools=weather))[0] is None
        hit, body = await ask(tools=weather)
        assert hit == "exact" and body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        miss, body = await ask(tools=time_fn)
        assert miss is None and body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
        assert (await ask(tools=weather, tool_choice="required"))[0] is None
        assert (await ask(response_format=fmt))[0] is None and (await ask(response_format=fmt))[0] == "exact"
        assert (await ask())[0] is None  # no tools, no format: its own entry
        await client.close()


async def test_unknown_v1_paths_pass_through_admitted_and_counted() -> None:
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        counted = s.sidecar.metrics.requests.labels("small", "ok", "miss")
        before = counted.value
        async with http.post(s.url + "/v1/not-modelled-yet", json={"model": "small-model"}) as resp:
            assert resp.status == 200  # the stub echoes unknown paths: its answer, unchanged
        async with http.get(s.url + "/health") as resp:
            assert resp.status < 500
        assert counted.value == before + 1
        assert s.backends[0].stats.inflight == 0 and all(r.inflight == 0 for r in s.sidecar.pool.all())
