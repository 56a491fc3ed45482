"""Shared cache tier parts that need no Redis: key layout, entry codec, breaker, config."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.config import ConfigError, parse_config
from thrifty.proxy.levers.shared.breaker import CircuitBreaker
from thrifty.proxy.levers.semantic_cache import AdaptiveIndex, SemanticCache
from thrifty.proxy.levers.shared.keys import (EntryTooLarge, SemanticEntry, exact_key, pack_body, pack_entry,
                                              semantic_key, unpack_body, unpack_entry, unpack_entry_lazy)

BASE = {"tiers": [{"name": "a", "model": "m", "price": {"gpu_hour": 1}}]}


def slot_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first { and the next }."""
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


def test_keys_hold_no_prompt_and_tag_by_tenant_or_partition() -> None:
    a = exact_key("thr", "key-abc", "f" * 64)
    b = exact_key("thr", "key-abc", "0" * 64)
    assert slot_tag(a) == slot_tag(b) != slot_tag(exact_key("thr", "key-other", "f" * 64))
    s1 = semantic_key("thr", "part1", "What is my secret plan?")
    assert "secret" not in s1 and slot_tag(s1) == slot_tag(semantic_key("thr", "part1", "another question"))
    assert s1 != semantic_key("thr", "part2", "What is my secret plan?")


def test_entry_codec_round_trip_compressed_and_capped() -> None:
    vector = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    body = {"choices": [{"message": {"content": "yes " * 500}}]}
    entry = SemanticEntry("p", "question?", vector, body, 123)
    blob = pack_entry(entry, 1 << 20)
    assert len(blob) < len("yes " * 500)  # compressed
    back = unpack_entry(blob)
    assert (back.partition, back.text, back.body, back.expires_ms) == ("p", "question?", body, 123)
    assert np.array_equal(back.vector, vector)
    with pytest.raises(EntryTooLarge):
        pack_entry(entry, 100)
    assert unpack_body(pack_body(body, 1 << 20)) == body
    with pytest.raises(EntryTooLarge):
        pack_body({"x": np.random.default_rng(1).bytes(4000).hex()}, 1000)


def test_lazy_entry_keeps_the_answer_compressed_and_refuses_other_formats() -> None:
    vector = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    body = {"choices": [{"message": {"content": "an answer"}}]}
    blob = pack_entry(SemanticEntry("p", "Is the secret question?", vector, body, 9), 1 << 20)
    assert b"secret" not in blob and b"an answer" not in blob  # nothing readable in the value
    lazy = unpack_entry_lazy(blob)
    assert (lazy.partition, lazy.text, lazy.expires_ms) == ("p", "Is the secret question?", 9)
    assert unpack_body(lazy.body_zlib) == body and np.array_equal(lazy.vector, vector)
    with pytest.raises(ValueError, match="format"):
        unpack_entry_lazy(b"\x01" + blob[1:])


def test_bulk_insert_with_compressed_bodies_finds_what_single_inserts_find() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = AdaptiveIndex(16, hnsw_from=10_000)
    index.add_many(np.arange(300, dtype=np.int64), vectors)  # stays exact numpy: one bulk copy
    keys, sims = index.search(vectors[123], 1)
    assert keys[0] == 123 and sims[0] == pytest.approx(1.0, abs=1e-5)
    cache = SemanticCache(16, max_bytes=1 << 20, ttl_s=60, similarity_floor=0.9, verifier=None)
    packed = pack_body({"a": 1}, 1 << 20)
    cache.insert_many([("p", f"q{i}", vectors[i], packed, None) for i in range(5)])
    assert cache.lookup("p", "q2", vectors[2]).body == packed  # the mirror subclass inflates it on a hit


def test_breaker_opens_after_failures_and_probes_after_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=1.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    now[0] = 1.5
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure()
    assert not breaker.allow()
    now[0] = 3.0
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.closed


@pytest.mark.parametrize("shared, field", [
    ({"url": "http://h"}, "cache.shared.url"),
    ({}, "cache.shared.url"),
    ({"url": "redis://h", "timeout_ms": 0}, "cache.shared.timeout_ms"),
    ({"url": "redis://h", "key_prefix": "a:b"}, "cache.shared.key_prefix"),
    ({"url": "redis://h", "nope": 1}, "cache.shared.nope"),
])
def test_config_errors_name_the_field(shared, field) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "cache": {"shared": shared}})
    assert f": {field}:" in str(err.value) and "\n" not in str(err.value)


def test_config_url_with_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "cache": {"shared": {"url": "http://:hunter2@h"}}})
    assert "hunter2" not in str(err.value)


def test_shared_tier_off_by_default() -> None:
    assert parse_config(BASE).cache.shared is None
    assert parse_config({**BASE, "cache": {"shared": {"url": "redis://r:6379/0"}}}).cache.shared.timeout_ms == 50
