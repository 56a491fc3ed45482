"""The simulator against the real vLLM CPU engine: same metric names and types, same shapes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from thrifty.bench import sim_calibration
from thrifty.sim.model import SpeculativeSim
from thrifty.sim.server import running_sim_server

pytestmark = pytest.mark.engine


def vllm_families(url: str) -> dict[str, str]:
    """vllm: metric family name -> type, as exposed on /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("vllm:")}


async def chat(url: str, model: str, prompt: str, max_tokens: int = 4) -> float:
    """Streamed chat; returns TTFT seconds."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    started = time.perf_counter()
    ttft = None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
        extra_body={"ignore_eos": True})
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
    await client.close()
    assert ttft is not None
    return ttft


async def test_metric_names_and_types_match_the_real_engine(vllm_engine) -> None:
    await chat(vllm_engine.url, vllm_engine.model, "Hello!")  # so lazily created series exist too
    real = vllm_families(vllm_engine.url)
    async with running_sim_server(served_model_names=[vllm_engine.model]) as url:
        await chat(url, vllm_engine.model, "Hello!")
        sim = await asyncio.to_thread(vllm_families, url)
    assert "vllm:num_requests_running" in real
    assert sorted(set(real) - set(sim)) == [], "metrics the real engine has and the simulator lacks"
    assert sorted(set(sim) - set(real)) == [], "metrics the simulator invents"
    assert sim == real  # and the same type for each


async def test_speculative_metrics_exist_in_the_simulator_with_speculation(vllm_engine) -> None:
    # The spec_decode names and help texts were checked once against a real engine started with
    # --speculative-config '{"method": "ngram", "num_speculative_tokens": 3, ...}' (identical sets);
    # here: the simulator adds exactly those families when it speculates.
    real = vllm_families(vllm_engine.url)
    async with running_sim_server(served_model_names=[vllm_engine.model], speculative=SpeculativeSim(3, 0.7)) as url:
        sim = await asyncio.to_thread(vllm_families, url)
    extra = set(sim) - set(real)
    assert extra and all(name.startswith("vllm:spec_decode") for name in extra)


async def latency_at(url: str, model: str, prompts: list[str], concurrency: int) -> tuple[float, float]:
    level = await sim_calibration.run_level(url, model, prompts[:concurrency], concurrency, 16)
    return level.ttft_s, level.tokens_per_s / concurrency  # per-stream decode speed


async def test_latency_rises_with_concurrency_on_both(vllm_engine) -> None:
    prompts = sim_calibration.load_prompts(sim_calibration.DEFAULT_PROMPTS, 8, 300) \
        if sim_calibration.DEFAULT_PROMPTS.exists() else [f"Explain topic {i} in detail. " * 20 for i in range(8)]
    prompts = [f"[{uuid.uuid4().hex}] {p}" for p in prompts]  # no prefix-cache help from earlier tests
    real_1 = await latency_at(vllm_engine.url, vllm_engine.model, prompts, 1)
    real_4 = await latency_at(vllm_engine.url, vllm_engine.model, prompts, 4)
    async with running_sim_server(served_model_names=[vllm_engine.model]) as url:
        sim_1 = await latency_at(url, vllm_engine.model, prompts, 1)
        sim_4 = await latency_at(url, vllm_engine.model, prompts, 4)
    for one, four in ((real_1, real_4), (sim_1, sim_4)):
        assert four[0] > one[0]  # TTFT rises
        assert four[1] < one[1]  # each stream decodes slower


async def test_prefix_hits_cut_ttft_on_both(vllm_engine) -> None:
    base = "You are a meticulous assistant who answers with care and cites sources. " * 18

    async def speedup(url: str) -> float:
        prefix = f"[{uuid.uuid4().hex}] {base}"
        cold = await chat(url, vllm_engine.model, prefix + "First question?")
        warm = await chat(url, vllm_engine.model, prefix + "Second question?")
        return warm / cold

    real = await speedup(vllm_engine.url)
    async with running_sim_server(served_model_names=[vllm_engine.model]) as url:
        sim = await speedup(url)
    assert real < 0.8 and sim < 0.8, (real, sim)


def test_calibration_bench_runs_against_the_real_engine(vllm_engine, capsys) -> None:
    if not sim_calibration.DEFAULT_PROMPTS.exists():
        pytest.skip(f"benchmark data {sim_calibration.DEFAULT_PROMPTS} not found")
    rc = sim_calibration.main(["--engine-url", vllm_engine.url, "--concurrency", "1,2", "--per-level", "1",
                               "--max-tokens", "6", "--max-prompt-chars", "400"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "sim-calibration" and len(last["ttft_ratio"]) == len(last["tps_ratio"]) == 2
    assert all(r > 0 for r in last["ttft_ratio"] + last["tps_ratio"])
