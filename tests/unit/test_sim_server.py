"""The simulated replica over HTTP, driven with the official openai SDK (loopback only)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from thrifty.profiles import PROFILES
from thrifty.sim.model import SpeculativeSim
from thrifty.sim.server import running_sim_server

MODEL = "SmolLM2-135M-Instruct"
FAST = "a100-llama3-8b"  # a quick profile keeps these tests short; timing shapes are tested in test_sim_model


def sim(**kwargs):
    kwargs.setdefault("served_model_names", [MODEL])
    return running_sim_server(FAST, **kwargs)


async def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """vllm: samples by name -> {sorted label items: value}."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("vllm:"):
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def total(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return sum(v for k, v in samples.get(name, {}).items() if all((lk, lv) in k for lk, lv in labels.items()))


async def test_chat_completion_shape_and_usage() -> None:
    async with sim(served_model_names=[MODEL, "small"]) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        reply = await client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": "Say hello in one word."}], max_tokens=12)
        choice = reply.choices[0]
        assert choice.message.role == "assistant" and choice.message.content.strip()
        assert choice.finish_reason in ("stop", "length")
        assert 1 <= reply.usage.completion_tokens <= 12
        assert len(choice.message.content.split()) == reply.usage.completion_tokens
        assert reply.usage.prompt_tokens > 5
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert reply.model == "small"
        forced = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count."}], max_tokens=9,
            extra_body={"ignore_eos": True})
        assert forced.usage.completion_tokens == 9 and forced.choices[0].finish_reason == "length"


async def test_streaming_chat_with_usage_and_logprobs() -> None:
    async with sim() as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story " * 20}], max_tokens=16, stream=True,
            stream_options={"include_usage": True}, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
        text, reasons, usage, logprob_tokens, arrivals = "", [], None, 0, []
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                    arrivals.append(time.perf_counter())
                if choice.logprobs and choice.logprobs.content:
                    logprob_tokens += len(choice.logprobs.content)
                    assert len(choice.logprobs.content[0].top_logprobs) == 2
                if choice.finish_reason:
                    reasons.append(choice.finish_reason)
        assert reasons == ["length"]
        assert usage is not None and usage.completion_tokens == 16 == len(text.split()) == logprob_tokens
        assert usage.prompt_tokens_details.cached_tokens == 0
        assert len(arrivals) >= 4  # tokens arrive over time, not in one lump
        assert arrivals[-1] - arrivals[0] > 15 * PROFILES[FAST].step_overhead_s * 0.8  # 15 decode steps


async def test_completions_models_and_n() -> None:
    async with sim(served_model_names=["a", "b"]) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        models = await client.models.list()
        assert [m.id for m in models.data] == ["a", "b"]
        reply = await client.completions.create(model="b", prompt="Once upon a time", max_tokens=5, n=2, logprobs=3,
                                                extra_body={"ignore_eos": True})
        assert sorted(c.index for c in reply.choices) == [0, 1]
        for choice in reply.choices:
            assert len(choice.logprobs.tokens) == 5 == len(choice.logprobs.token_logprobs)
            assert all(len(top) == 3 for top in choice.logprobs.top_logprobs)
            assert "".join(choice.logprobs.tokens) == choice.text
        assert reply.usage.completion_tokens == 10
        stream = await client.completions.create(model="a", prompt="x " * 50, max_tokens=4, stream=True,
                                                 extra_body={"ignore_eos": True})
        pieces = [c.choices[0].text async for c in stream if c.choices]
        assert len("".join(pieces).split()) == 4


async def test_prefix_cache_hits_show_in_usage_and_metrics() -> None:
    async with sim() as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        system = {"role": "system", "content": "You are a careful assistant. " * 60}
        first = await client.chat.completions.create(
            model=MODEL, messages=[system, {"role": "user", "content": "one"}], max_tokens=2)
        second = await client.chat.completions.create(
            model=MODEL, messages=[system, {"role": "user", "content": "two"}], max_tokens=2)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert second.usage.prompt_tokens_details.cached_tokens >= 400
        samples = await scrape(url)
        assert total(samples, "vllm:prefix_cache_hits_total") == second.usage.prompt_tokens_details.cached_tokens
        assert total(samples, "vllm:prefix_cache_queries_total") == first.usage.prompt_tokens + second.usage.prompt_tokens
        assert total(samples, "vllm:request_success_total") == 2
        assert total(samples, "vllm:time_to_first_token_seconds_count") == 2
        assert total(samples, "vllm:generation_tokens_total") == first.usage.completion_tokens + second.usage.completion_tokens


async def test_gauges_show_running_and_waiting_under_load() -> None:
    # 40 blocks = 640 tokens of KV: one ~500-token request at a time
    async with sim(kv_blocks=40) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        calls = [asyncio.create_task(client.completions.create(
            model=MODEL, prompt=f"{i} " + "word " * 400, max_tokens=60, extra_body={"ignore_eos": True}))
            for i in range(4)]
        await asyncio.sleep(0.08)
        samples = await scrape(url)
        assert total(samples, "vllm:num_requests_running") >= 1
        assert total(samples, "vllm:num_requests_waiting") >= 1
        assert total(samples, "vllm:kv_cache_usage_perc") > 0.5
        await asyncio.gather(*calls)
        samples = await scrape(url)
        assert total(samples, "vllm:num_requests_running") == 0
        assert total(samples, "vllm:num_requests_waiting") == 0
        assert total(samples, "vllm:request_queue_time_seconds_sum") > 0


async def test_client_disconnect_aborts_the_request() -> None:
    async with sim() as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "long"}], max_tokens=500, stream=True,
            extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
        for _ in range(50):
            samples = await scrape(url)
            if total(samples, "vllm:request_success_total", finished_reason="abort") == 1:
                break
            await asyncio.sleep(0.05)
        assert total(samples, "vllm:request_success_total", finished_reason="abort") == 1
        assert total(samples, "vllm:num_requests_running") == 0


async def test_bad_requests_get_openai_errors() -> None:
    async with sim() as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="messages"):
            await client.chat.completions.create(model=MODEL, messages=[])
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await client.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=10)
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            await client.completions.create(model=MODEL, prompt="hi", max_tokens=0)
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", data=b"{not json") as resp:
                assert resp.status == 400
                body = await resp.json()
                assert "JSON" in body["error"]["message"] and body["error"]["type"] == "BadRequestError"
            async with session.get(url + "/health") as resp:
                assert resp.status == 200


async def test_time_scale_speeds_up_the_clock() -> None:
    async with running_sim_server("cpu-smollm2-135m", served_model_names=[MODEL], time_scale=20) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        started = time.perf_counter()
        await client.completions.create(model=MODEL, prompt="hi", max_tokens=60, extra_body={"ignore_eos": True})
        wall = time.perf_counter() - started
        samples = await scrape(url)
    modelled = 60 * PROFILES["cpu-smollm2-135m"].step_overhead_s  # at least 60 steps' fixed overhead
    assert wall < modelled / 3
    assert total(samples, "vllm:e2e_request_latency_seconds_sum") < modelled / 3


async def test_speculative_metrics_appear_only_with_speculation() -> None:
    async with sim() as url:
        plain = await scrape(url)
    assert not any(name.startswith("vllm:spec_decode") for name in plain)
    async with sim(speculative=SpeculativeSim(3, 0.7)) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none")
        await client.completions.create(model=MODEL, prompt="hi", max_tokens=30, extra_body={"ignore_eos": True})
        samples = await scrape(url)
    drafts = total(samples, "vllm:spec_decode_num_drafts_total")
    assert drafts > 0
    assert total(samples, "vllm:spec_decode_num_draft_tokens_total") == 3 * drafts
    assert 0 < total(samples, "vllm:spec_decode_num_accepted_tokens_total") < 3 * drafts
