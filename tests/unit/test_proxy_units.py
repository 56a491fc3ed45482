"""Small units of the request path: validation, tenant, prefix blocks, balancer, metrics parsing, accounting."""

from __future__ import annotations

import pytest

from thrifty.config import parse_config
from thrifty.proxy.observe.accounting import CostModel, Usage
from thrifty.proxy.balance.balancer import build_balancer
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.pool import ReplicaState, parse_vllm_metrics
from thrifty.proxy.request.prefix import block_hashes
from thrifty.proxy.relay import find_usage
from thrifty.proxy.request.tenant import tenant_of
from thrifty.proxy.request.validate import parse_body, validate


def test_validate_accepts_good_and_names_the_bad_param() -> None:
    ok = validate("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stream": True})
    assert ok.stream and ok.model == "m"
    with pytest.raises(ApiError) as e:
        validate("completions", {"model": "m", "prompt": "x", "n": 0})
    assert e.value.status == 400 and e.value.param == "n"
    with pytest.raises(ApiError):
        parse_body(b"\xff{}")


def test_tenant_hashes_key_and_never_keeps_it() -> None:
    t = tenant_of("Bearer sk-secret", None)
    assert t.startswith("key-") and "secret" not in t and t == tenant_of("Bearer sk-secret", None)
    assert tenant_of("Bearer other", None) != t
    assert tenant_of("Bearer sk-secret", "team-a") == t  # the header is not trusted by default


def test_prefix_blocks_share_exactly_the_common_prefix() -> None:
    a = block_hashes("x" * 1000 + "A" * 600, block_chars=256)
    b = block_hashes("x" * 1000 + "B" * 600, block_chars=256)
    assert a[:3] == b[:3] and a[3] != b[3]


def test_balancer_prefers_prefix_owner_until_it_is_overloaded() -> None:
    bal = build_balancer("thrifty", epsilon=0.5)
    reps = [ReplicaState(url=f"r{i}", tier="t") for i in range(3)]
    req = PickRequest(blocks=(1, 2, 3), tokens=100)
    first = bal.pick(req, reps)
    assert first is not None
    again = bal.pick(req, reps)
    assert again is not None and again.replica is first.replica and again.reason == "prefix"
    first.replica.inflight_tokens = 10_000  # far above the mean: bounded load steers away
    moved = bal.pick(req, reps)
    assert moved is not None and moved.replica is not first.replica
    for r in reps:
        r.healthy = False
    assert bal.pick(req, reps) is None


def test_balancer_forget_drops_a_downed_replicas_prefix_affinity() -> None:
    bal = build_balancer("thrifty", epsilon=10.0)
    reps = [ReplicaState(url=f"r{i}", tier="t") for i in range(2)]
    req = PickRequest(blocks=(7, 8), tokens=10)
    first = bal.pick(req, reps)
    assert first is not None and bal.pick(req, reps).reason == "prefix"
    bal.forget(first.replica.url)
    assert bal.pick(req, reps).reason == "load"  # nobody holds the blocks any more
    bal.forget("http://never-seen")  # scorers without memory, and unknown URLs, are no-ops


def test_parse_vllm_metrics_sums_label_sets() -> None:
    text = (b'# HELP x\nvllm:num_requests_waiting{model_name="a"} 2.0\nvllm:num_requests_waiting{model_name="b"} 3\n'
            b'vllm:kv_cache_usage_perc{model_name="a"} 0.5\nvllm:num_requests_running 7\n')
    assert parse_vllm_metrics(text) == {"waiting": 5.0, "kv_usage": 0.5, "running": 7.0}


def test_parse_vllm_metrics_reads_the_engine_counters_the_controller_needs() -> None:
    text = (b'vllm:prompt_tokens_total{engine="0"} 1200\nvllm:generation_tokens_total{engine="0"} 340\n'
            b'vllm:spec_decode_num_draft_tokens_total{engine="0"} 90\n'
            b'vllm:spec_decode_num_accepted_tokens_total{engine="0"} 54\nvllm:spec_decode_num_drafts_total 30\n')
    assert parse_vllm_metrics(text) == {"prompt_tokens": 1200.0, "generation_tokens": 340.0,
                                        "spec_draft_tokens": 90.0, "spec_accepted_tokens": 54.0}


def test_find_usage_reads_only_the_usage_object() -> None:
    raw = b'{"choices":[{"text":"\\"usage\\": no"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    assert find_usage(raw) == {"prompt_tokens": 3, "completion_tokens": 4}


def test_cost_model_api_and_gpu_prices() -> None:
    cfg = parse_config({"tiers": [
        {"name": "api", "model": "a", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0, "cached_input_per_1m": 0.5}},
        {"name": "gpu", "model": "g", "price": {"gpu_hour": 3.6}}]})
    costs = CostModel(cfg, nominal_tokens_per_s=1000)
    usage = Usage(input=1000, output=500, cached=400)
    assert costs.dollars(cfg.tier("api"), usage) == pytest.approx((600 * 1 + 400 * 0.5 + 500 * 2) / 1e6)
    assert costs.dollars(cfg.tier("gpu"), usage) == pytest.approx(3.6 / 3600 / 1000 * 1100)
    actual, baseline = costs.cost("api", usage, cache_hit=True)
    assert actual == 0 and baseline > 0
