"""The real vLLM CPU engine (SmolLM2-135M), started by `thrifty engine start`, driven
with the official openai SDK, and its arguments checked by vLLM's own parser."""

from __future__ import annotations

import urllib.request

import openai
import pytest

from thrifty.config import parse_config
from thrifty.engine.launcher import validate_vllm_args, vllm_args, vllm_python

pytestmark = pytest.mark.engine


def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.base_url, api_key="unused", max_retries=0, timeout=120)


def test_models_lists_served_names(vllm_engine) -> None:
    ids = {m.id for m in client(vllm_engine).models.list().data}
    assert vllm_engine.model in ids
    assert "gpt-4o-mini" in ids  # the alias existing clients use


def test_chat_completion(vllm_engine) -> None:
    resp = client(vllm_engine).chat.completions.create(
        model=vllm_engine.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 8


def test_chat_streaming_with_usage(vllm_engine) -> None:
    stream = client(vllm_engine).chat.completions.create(
        model=vllm_engine.model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2
    assert usage is not None and usage.completion_tokens > 0


def test_completions(vllm_engine) -> None:
    resp = client(vllm_engine).completions.create(model=vllm_engine.model, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert resp.choices[0].text
    assert resp.usage.completion_tokens > 0


def test_vllm_metrics_are_exposed(vllm_engine) -> None:
    client(vllm_engine).completions.create(model=vllm_engine.model, prompt="One two three", max_tokens=3)
    text = urllib.request.urlopen(vllm_engine.url + "/metrics", timeout=10).read().decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vllm:")}
    for expected in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                     "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert expected in names, expected
    generated = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")]
    assert sum(generated) > 0


def _tier(engine: dict):
    return parse_config({"tiers": [{"name": "t", "model": "meta-llama/Llama-3.1-8B-Instruct", "engine": engine,
                                    "price": {"gpu_hour": 2}}]}).tiers[0]


def test_vllm_parser_accepts_gpu_config() -> None:
    if vllm_python() is None:
        pytest.skip("no vLLM importable")
    gpu = _tier({"quantization": "awq", "speculative": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4},
                 "max_num_seqs": 128, "max_num_batched_tokens": 8192, "kv_cache_dtype": "fp8", "max_model_len": 8192,
                 "gpu_memory_utilization": 0.9, "tensor_parallel_size": 2})
    result = validate_vllm_args(vllm_args(gpu, port=8001))
    assert result.checked and result.ok, result.error


def test_vllm_parser_rejects_bad_arguments() -> None:
    if vllm_python() is None:
        pytest.skip("no vLLM importable")
    bad = _tier({"extra_args": ["--max-num-seqs", "lots"]})
    result = validate_vllm_args(vllm_args(bad, port=8001))
    assert result.checked and not result.ok
    assert "max-num-seqs" in result.error or "lots" in result.error
