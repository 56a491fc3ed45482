"""Exact cache: canonical keys, determinism rule, byte/TTL/LRU bounds, SSE replay."""

from __future__ import annotations

import json

from thrifty.proxy.levers.exact_cache import ExactCache, cached_body_as_sse, is_deterministic, request_key

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_key_ignores_stream_user_and_key_order() -> None:
    a = request_key("t1", "chat", BODY)
    b = request_key("t1", "chat", {"temperature": 0, "stream": True, "user": "bob", "messages": BODY["messages"], "model": "small"})
    assert a == b


def test_key_separates_tenants_models_and_params() -> None:
    base = request_key("t1", "chat", BODY)
    assert request_key("t2", "chat", BODY) != base
    assert request_key("t1", "chat", {**BODY, "model": "large"}) != base
    assert request_key("t1", "chat", {**BODY, "max_tokens": 5}) != base
    assert request_key("t1", "chat", {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}) != base
    assert request_key("t1", "completions", BODY) != base


def test_deterministic_rule() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.7, "seed": 3})
    assert not is_deterministic({})  # OpenAI's default temperature is 1
    assert not is_deterministic({"temperature": 0.2})


def test_lru_by_bytes_and_ttl() -> None:
    now = [0.0]
    cache = ExactCache(max_bytes=400, ttl_s=10, clock=lambda: now[0])  # ~113 bytes each: 3 fit
    body = {"text": "x" * 100}
    for i in range(5):
        assert cache.put(f"k{i}", body)
    assert cache.bytes <= 400 and len(cache) == 3
    assert cache.get("k0") is None  # the oldest went first
    assert cache.get("k4") == body
    now[0] = 11
    assert cache.get("k4") is None  # expired
    assert not cache.put("huge", {"text": "y" * 10_000})


def test_get_refreshes_recency() -> None:
    cache = ExactCache(max_bytes=250, ttl_s=100)  # 2 entries fit
    body = {"text": "x" * 100}
    cache.put("a", body)
    cache.put("b", body)
    cache.get("a")
    cache.put("c", body)
    assert cache.get("a") == body and cache.get("b") is None


def _events(chunks: list[bytes]) -> list[dict | str]:
    out: list[dict | str] = []
    for chunk in chunks:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        payload = chunk[6:-2].decode()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_body_replays_as_sse() -> None:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    events = _events(cached_body_as_sse(body, include_usage=True))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-1]["usage"]["total_tokens"] == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    no_usage = _events(cached_body_as_sse(body))
    assert not any(isinstance(e, dict) and "usage" in e for e in no_usage)


def test_completion_body_replays_as_sse() -> None:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [{"index": 0, "text": "abc", "finish_reason": "length"}]}
    chunks = [e for e in _events(cached_body_as_sse(body)) if isinstance(e, dict)]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abc"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
