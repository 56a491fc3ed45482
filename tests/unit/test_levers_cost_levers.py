"""CostLevers end to end (no engine): caches, tenant isolation, bypass, failures, routing, metrics.

Uses the hashed n-gram encoder (no model in unit tests) and the shipped verifier artifact.
"""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from thrifty.config import parse_config
from thrifty.proxy.levers.cost_levers import CostLevers
from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder
from thrifty.proxy.levers.protocol import NoLevers
from thrifty.proxy.request.context import RequestContext
from thrifty.proxy.levers.semantic_cache import NumpyIndex
from thrifty.proxy.levers.verifier import Verifier
from tests.unit.test_levers_router import small_set

TIERS = ["small", "large"]


class CountingEncoder(HashedNgramEncoder):
    """The hashed encoder, counting how many texts it was asked to embed."""

    def __init__(self) -> None:
        super().__init__(64)
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += len(texts)
        return super().encode(texts)


def config(**overrides):
    data = {
        "tiers": [
            {"name": "small", "model": "smol", "price": {"gpu_hour": 1}, "cache": overrides.pop("small_cache", True)},
            {"name": "large", "model": "big", "price": {"gpu_hour": 8}},
        ],
        # The learned score is what most tests here exercise: the hard-prompt rule is off unless asked for.
        "router": {"enabled": overrides.pop("router", True), "hard_prompts": overrides.pop("hard_prompts", False)},
        # Most tests here use sampled requests to reach the semantic cache: opt both tiers in
        # (the default, no tier, is tested in test_levers_cache_tenancy.py).
        "cache": {"semantic": {"sampled_tiers": overrides.pop("sampled_tiers", ["small", "large"])}},
    }
    return parse_config(data)


@pytest.fixture
def encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture(scope="module")
def router_model():
    from thrifty.training.router_fit import train_router

    return train_router([small_set()], HashedNgramEncoder(64).encode, embedder_name=HashedNgramEncoder(64).name, l2=1.0)


def make(encoder, router_model, registry=None, **kw) -> tuple[CostLevers, CollectorRegistry]:
    registry = registry or CollectorRegistry()
    levers = CostLevers(config(**kw), registry, embedder=Embedder(encoder), router_model=router_model, verifier=Verifier.load())
    return levers, registry


def ctx(text: str, tenant: str = "t1", system: str = "You are helpful.", headers: dict | None = None, temperature: float = 0, model: str = "big") -> RequestContext:
    body = {"model": model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}], "temperature": temperature}
    return RequestContext(request_id="r", endpoint="chat", body=body, model_alias=model, tenant=tenant, stream=False, headers=headers or {}, requested_tier="large" if model == "big" else "small")


def answer(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "big", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def metric(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_exact_hit_and_sse_replay(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model)
    first = ctx("What is the capital of France?")
    assert await levers.lookup(first) is None
    await levers.route(first, TIERS)
    await levers.store(first, answer("Paris"))
    again = ctx("What is the capital of France?")
    hit = await levers.lookup(again)
    assert hit is not None and hit.kind == "exact" and again.cache_result == "exact"
    assert hit.body["choices"][0]["message"]["content"] == "Paris"
    assert metric(reg, "thrifty_cache_lookups_total", kind="exact", result="hit") == 1
    assert metric(reg, "thrifty_cache_entries", kind="exact") == 1


async def test_semantic_hit_needs_same_context(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model)
    first = ctx("How do I reset my password?", temperature=0.7)  # sampled: no exact caching
    await levers.lookup(first)
    await levers.store(first, answer("Click 'forgot password'."))
    reworded = ctx("how do I reset my password?", temperature=0.7)  # same after lower-casing
    hit = await levers.lookup(reworded)
    assert hit is not None and hit.kind == "semantic"
    other_system = ctx("how do I reset my password", temperature=0.7, system="You are a pirate.")
    assert await levers.lookup(other_system) is None
    assert metric(reg, "thrifty_cache_lookups_total", kind="exact", result="skipped") >= 2


async def test_no_cross_tenant_hit_ever(encoder, router_model) -> None:
    levers, _ = make(encoder, router_model)
    for prompt in ("What is my account balance?", "Show me my last invoice"):
        mine = ctx(prompt, tenant="alice")
        await levers.lookup(mine)
        await levers.store(mine, answer(f"alice's secret for {prompt}"))
        theirs = ctx(prompt, tenant="mallory")
        assert await levers.lookup(theirs) is None
        sampled = ctx(prompt, tenant="mallory", temperature=0.9)
        assert await levers.lookup(sampled) is None


async def test_partition_check_holds_even_if_the_index_leaks(encoder, router_model) -> None:
    """One index object shared by every partition (a broken index) still cannot leak."""
    levers, _ = make(encoder, router_model)
    shared = NumpyIndex(encoder.dim)
    levers.semantic._index_factory = lambda dim: shared
    alice = ctx("What is my PIN code?", tenant="alice", temperature=0.5)
    await levers.lookup(alice)
    await levers.store(alice, answer("1234"))
    assert await levers.lookup(ctx("What is my PIN code?", tenant="mallory", temperature=0.5)) is None


async def test_bypass_header_tier_switch_and_policy(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model, small_cache=False)
    c = ctx("cache me", headers={"x-thrifty-cache": "bypass"})
    assert await levers.lookup(c) is None and c.cache_result == "bypass"
    await levers.store(c, answer("a"))
    assert len(levers.exact) == 0
    small = ctx("cache me", model="smol")  # the small tier has cache: false
    await levers.lookup(small)
    await levers.store(small, answer("a"))
    assert small.cache_result == "bypass" and len(levers.exact) == 0
    levers.apply_policy({"cache_enabled": False})
    off = ctx("cache me")
    await levers.lookup(off)
    await levers.store(off, answer("a"))
    assert len(levers.exact) == 0
    levers.apply_policy({"cache_enabled": True})
    on = ctx("cache me")
    await levers.lookup(on)
    await levers.store(on, answer("a"))
    assert len(levers.exact) == 1
    # A switched-off cache is not a lookup: it shows as cache="bypass" on thrifty_requests_total.
    assert metric(reg, "thrifty_cache_lookups_total", kind="exact", result="skipped") == 0
    assert metric(reg, "thrifty_cache_lookups_total", kind="exact", result="miss") == 1


async def test_bypass_is_decided_for_every_endpoint_and_answers_are_kept_only_with_a_cache(encoder, router_model) -> None:
    levers, _ = make(encoder, router_model)
    def embeddings() -> RequestContext:
        return RequestContext(request_id="e", endpoint="embeddings", body={"model": "big", "input": "x"},
                              model_alias="big", tenant="t1", stream=False, requested_tier="large")

    levers.apply_policy({"cache_enabled": False})
    off = embeddings()
    assert await levers.lookup(off) is None and off.cache_result == "bypass"
    levers.apply_policy({"cache_enabled": True})
    on = embeddings()
    assert await levers.lookup(on) is None and on.cache_result == "miss"  # embeddings are never cached
    assert levers.stores_answers
    router_only = CostLevers(parse_config({"tiers": [{"name": "small", "model": "smol", "price": {"gpu_hour": 1}},
                                                     {"name": "large", "model": "big", "price": {"gpu_hour": 8}}],
                                           "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}}}),
                             CollectorRegistry(), embedder=Embedder(encoder), router_model=router_model)
    assert not router_only.stores_answers


def test_no_levers_is_a_complete_null_object() -> None:
    levers = NoLevers()
    levers.apply_policy({"cache_enabled": False, "router_threshold": 0.3})
    assert not levers.stores_answers


class FailingIndex:
    """An index whose every call raises: a cache failure must degrade to a miss."""

    def __init__(self, dim: int) -> None:
        pass

    def __len__(self) -> int:
        return 1

    def add(self, key, vector):
        raise RuntimeError("index broken")

    def remove(self, key):
        raise RuntimeError("index broken")

    def search(self, vector, k):
        raise RuntimeError("index broken")


async def test_failing_index_is_a_miss_not_an_error(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model)
    levers.semantic._index_factory = FailingIndex
    c = ctx("anything at all", temperature=0.5)
    assert await levers.lookup(c) is None
    await levers.store(c, answer("a"))  # the index raises inside: must not propagate
    again = ctx("anything at all", temperature=0.5)
    assert await levers.lookup(again) is None and again.cache_result == "miss"
    assert metric(reg, "thrifty_cache_lookups_total", kind="semantic", result="error") == 1


async def test_embedding_computed_once_per_request(encoder, router_model) -> None:
    levers, _ = make(encoder, router_model)
    c = ctx("Prove that the group of order 15 is abelian, lemma 1", temperature=0.5)
    await levers.lookup(c)
    await levers.route(c, TIERS)
    await levers.store(c, answer("proof"))
    assert encoder.calls == 1


async def test_routing_header_model_and_ceiling(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model)
    easy = ctx("What is 3 plus 4? case 77", temperature=0.5)
    hard = ctx("Prove that the group of order 51 is abelian, lemma 8", temperature=0.5)
    assert await levers.route(easy, TIERS) == "small" and easy.router_score is not None
    assert await levers.route(hard, TIERS) == "large"
    forced = ctx("What is 3 plus 4? case 77", headers={"x-thrifty-tier": "large"})
    assert await levers.route(forced, TIERS) == "large"
    asked_small = ctx("Prove that the group of order 51 is abelian, lemma 8", model="smol")
    assert await levers.route(asked_small, TIERS) == "small"  # never above what was asked
    levers.apply_policy({"router_threshold": 0.0})
    assert await levers.route(ctx("Prove that the group of order 9 is abelian, lemma 3"), TIERS) == "small"
    levers.apply_policy({"router_threshold": None})
    assert levers.router_threshold == levers.default_threshold
    assert metric(reg, "thrifty_router_decisions_total", tier="large", reason="header") == 1
    assert metric(reg, "thrifty_router_decisions_total", tier="small", reason="model") >= 2
    assert metric(reg, "thrifty_router_score_count") >= 3


async def test_hard_prompts_go_to_the_largest_allowed_tier(encoder, router_model) -> None:
    levers, reg = make(encoder, router_model, hard_prompts=True)
    levers.apply_policy({"router_threshold": 0.0})  # the learned score alone would send everything small
    assert await levers.route(ctx("Prove that there are infinitely many twin primes."), TIERS) == "large"
    assert await levers.route(ctx("Write a Python function that merges two sorted lists."), TIERS) == "large"
    assert await levers.route(ctx("What is the capital of France?"), TIERS) == "small"
    assert await levers.route(ctx("Prove that there are infinitely many twin primes.", model="smol"), TIERS) == "small"  # never above what was asked
    assert metric(reg, "thrifty_router_decisions_total", tier="large", reason="hard") == 2
    off, _ = make(encoder, router_model, hard_prompts=False)
    off.apply_policy({"router_threshold": 0.0})
    assert await off.route(ctx("Prove that there are infinitely many twin primes."), TIERS) == "small"


async def test_router_disabled_keeps_requested_tier(encoder, router_model) -> None:
    levers, reg = make(encoder, None, router=False)
    c = ctx("What is 3 plus 4? case 77")
    assert await levers.route(c, TIERS) == "large"
    assert metric(reg, "thrifty_router_decisions_total", tier="large", reason="disabled") == 1


async def test_only_complete_answers_are_stored(encoder, router_model) -> None:
    levers, _ = make(encoder, router_model)
    broken = answer("half")
    broken["choices"][0]["finish_reason"] = None
    c = ctx("store me?")
    await levers.lookup(c)
    await levers.store(c, broken)
    assert len(levers.exact) == 0
    truncated = answer("cut at max_tokens")
    truncated["choices"][0]["finish_reason"] = "length"  # same max_tokens is part of the key
    await levers.store(c, truncated)
    assert len(levers.exact) == 1
