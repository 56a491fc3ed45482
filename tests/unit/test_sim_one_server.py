"""The simulator and the stub are one server: the same answer shapes, the same faults."""

from __future__ import annotations

import json

import aiohttp

from thrifty.sim.http_server import Faults
from thrifty.sim.server import running_sim_server
from thrifty.sim.stub_backend import StubBackend, StubBehaviour

MODEL = "m"
CHAT = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def _keys(value: object) -> object:
    """The shape of a JSON value: nested keys, no values."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v) for v in value[:1]]
    return type(value).__name__ if value is not None else None


async def _answers(url: str) -> tuple[dict, list[dict]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/chat/completions", json={**CHAT, "logprobs": True}) as resp:
            plain = await resp.json()
        stream_body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(url + "/v1/chat/completions", json=stream_body) as resp:
            events = [e for e in (await resp.read()).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    return plain, [json.loads(e[6:]) for e in events[:-1]]


async def test_simulator_and_stub_answer_in_the_same_shapes() -> None:
    stub = StubBackend(StubBehaviour(chunks=3))
    try:
        stub_plain, stub_chunks = await _answers(await stub.start())
    finally:
        await stub.stop()
    async with running_sim_server("a100-llama3-8b", served_model_names=[MODEL]) as url:
        sim_plain, sim_chunks = await _answers(url)
    assert _keys(stub_plain) == _keys(sim_plain)
    assert stub_plain["choices"][0]["message"]["content"] == "w0 w1 w2 "
    # first text chunk (with the role), a finish chunk, then the usage chunk: the same shapes on both
    for chunks in (stub_chunks, sim_chunks):
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-2]["choices"][0]["delta"] == {}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
        assert all("usage" not in c for c in chunks[:-1])
    assert [_keys(c) for c in (stub_chunks[0], stub_chunks[-2], stub_chunks[-1])] == \
        [_keys(c) for c in (sim_chunks[0], sim_chunks[-2], sim_chunks[-1])]


async def test_the_modelled_server_takes_faults_too() -> None:
    async with running_sim_server("a100-llama3-8b", served_model_names=[MODEL], faults=Faults(fail_status=503)) as url:
        async with aiohttp.ClientSession() as http, http.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["type"] == "server_error"
    async with running_sim_server("a100-llama3-8b", served_model_names=[MODEL], faults=Faults(die_after_chunks=1)) as url:
        async with aiohttp.ClientSession() as http:
            body = {**CHAT, "max_tokens": 50, "stream": True, "ignore_eos": True}
            try:
                async with http.post(url + "/v1/chat/completions", json=body) as resp:
                    raw = await resp.read()
            except aiohttp.ClientPayloadError:
                raw = b""
    assert b"[DONE]" not in raw  # died mid-stream: no end of stream


async def test_stub_echoes_other_paths_and_embeds() -> None:
    stub = StubBackend(name="b7")
    url = await stub.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/tokenize?x=1", data=b"abc") as resp:
                assert await resp.json() == {"path": "/tokenize?x=1", "method": "POST", "body_bytes": 3, "backend": "b7"}
            async with http.post(url + "/v1/embeddings", json={"model": "e", "input": ["a", "b"]}) as resp:
                assert len((await resp.json())["data"]) == 2
    finally:
        await stub.stop()
    assert stub.stats.requests == 1  # the embedding; the echo is not a model request
