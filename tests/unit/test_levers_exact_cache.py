"""Exact cache: canonical keys, determinism rule, byte/TTL/LRU bounds."""

from __future__ import annotations

from thrifty.proxy.levers.exact_cache import ExactCache, is_deterministic, request_key

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
