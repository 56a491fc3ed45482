"""The default answer-length cap: added only when a request sets none, shrunk to fit the context."""

import json

import pytest

from thrifty.config import ConfigError, parse_config
from thrifty.proxy.relay import default_budget, upstream_body
from thrifty.proxy.request.context import RequestContext


def _ctx(body: dict, endpoint: str = "chat") -> RequestContext:
    return RequestContext(request_id="r", endpoint=endpoint, body=body, model_alias="m", tenant="t", stream=False, tier="small", requested_tier="small")


def _chat(text: str = "What is the capital of France?", **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_a_request_without_a_budget_gets_the_cap() -> None:
    ctx = _ctx(_chat())
    cap = default_budget(ctx, 512, None)
    assert cap == 512
    body, _ = upstream_body(ctx, json.dumps(ctx.body).encode(), "m", cap)
    assert json.loads(body)["max_tokens"] == 512


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_the_clients_own_budget_is_kept(key: str) -> None:
    ctx = _ctx(_chat(**{key: 4000}))
    assert default_budget(ctx, 512, None) is None
    raw = json.dumps(ctx.body).encode()
    assert upstream_body(ctx, raw, "m", None)[0] == raw  # untouched bytes


def test_the_cap_fits_the_context_beside_the_prompt() -> None:
    long_prompt = "word " * 1200  # ~1,500 estimated tokens
    cap = default_budget(_ctx(_chat(long_prompt)), 1024, 2048)
    assert cap is not None and cap < 2048 - 1500
    assert default_budget(_ctx(_chat("word " * 2000)), 1024, 2048) is None  # no room: the engine decides


def test_no_cap_configured_and_other_endpoints_are_untouched() -> None:
    assert default_budget(_ctx(_chat()), None, None) is None
    assert default_budget(_ctx({"model": "m", "input": "x"}, endpoint="embeddings"), 512, None) is None


def test_config_default_and_bad_value() -> None:
    tier = {"name": "small", "model": "m", "price": {"gpu_hour": 1}}
    assert parse_config({"tiers": [tier]}).tiers[0].default_max_tokens == 1024
    assert parse_config({"tiers": [{**tier, "default_max_tokens": None}]}).tiers[0].default_max_tokens is None
    with pytest.raises(ConfigError, match="default_max_tokens"):
        parse_config({"tiers": [{**tier, "default_max_tokens": 0}]})
