"""Bounded work per request: malformed bodies are 400s (never 500s), internal failures are
counted as errors, long prompts are embedded through a bounded view, and no header value
reaches a log line.

The sidecar runs with the real exact and semantic caches; the encoder is the hashed
n-gram one (no model in unit tests) and replicas are `StubBackend` fakes.
"""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest

from tests.unit.proxy_harness import config_for, stack
from thrifty.proxy.levers.cost_levers import CostLevers, query_text
from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder
from thrifty.proxy.levers.protocol import RequestContext
from thrifty.proxy.observe.logs import setup_logging
from thrifty.proxy.request.prefix import VIEW_EDGE_CHARS, bounded_view
from thrifty.proxy.request.validate import MAX_JSON_DEPTH
from thrifty.sim.stub_backend import StubBehaviour

CACHES = {"router": {"enabled": False}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": True}}}
USER = {"role": "user", "content": "hi"}


def _chat(**fields: object) -> bytes:
    return json.dumps({"model": "small-model", "temperature": 0, **fields}).encode()


MALFORMED: list[tuple[str, bytes]] = [
    ("2,000 nested arrays", b'{"model": "small-model", "messages": [' + b"[" * 2000 + b"]" * 2000 + b"]}"),
    ("300 nested arrays in an extra field", _chat(messages=[USER]).replace(b'"temperature"', b'"x": ' + b"[" * 300 + b"]" * 300 + b', "temperature"')),
    ("role is an object", _chat(messages=[{"role": {}, "content": "hi"}])),
    ("role is a list", _chat(messages=[{"role": ["user"], "content": "hi"}])),
    ("message is a string", _chat(messages=["hi"])),
    ("message is null", _chat(messages=[None])),
    ("messages is an object", _chat(messages={"role": "user"})),
    ("content is an object", _chat(messages=[{"role": "user", "content": {"text": "hi"}}])),
    ("prompt is an object", b'{"model": "small-model", "prompt": {"a": 1}}'),
    ("stream_options is a list", _chat(messages=[USER], stream=True, stream_options=[1])),
    ("stop is a number", _chat(messages=[USER], stop=5)),
    ("tools is a string", _chat(messages=[USER], tools="x")),
    ("max_tokens is a float", _chat(messages=[USER], max_tokens=1.5)),
    ("top-level array", b"[1, 2, 3]"),
    ("NaN temperature", b'{"model": "small-model", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
]
# Odd but not unsafe: passed on to the replica as vLLM would take them (no stricter than vLLM).
TOLERATED: list[tuple[str, bytes]] = [
    ("text part whose text is an object", _chat(messages=[{"role": "user", "content": [{"type": "text", "text": {}}]}])),
    ("part without a type", _chat(messages=[{"role": "user", "content": [{"text": "hi"}]}])),
    ("unknown extra field", _chat(messages=[USER], frobnicate={"a": [1, 2]})),
]


async def test_malformed_bodies_are_400_in_openai_shape_and_odd_ones_pass() -> None:
    async with stack([StubBehaviour()], **CACHES) as s, aiohttp.ClientSession() as http:
        s.sidecar.set_levers(CostLevers(config_for({"small": [b.url for b in s.backends]}, **CACHES), s.sidecar.metrics.registry,
                                        embedder=Embedder(HashedNgramEncoder(64))))
        url = s.url + "/v1/chat/completions"
        for name, body in MALFORMED:
            path = "/v1/completions" if b'"prompt"' in body else "/v1/chat/completions"
            async with http.post(s.url + path, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400, name
                err = (await resp.json())["error"]
                assert err["type"] == "invalid_request_error" and err["message"], name
        assert s.backends[0].stats.requests == 0
        for name, body in TOLERATED:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200, name
        assert s.backends[0].stats.requests == len(TOLERATED)
        reg = s.sidecar.metrics.registry
        assert not reg.get_sample_value("thrifty_requests_total", {"tier": "none", "outcome": "internal_error", "cache": "miss"})


async def test_a_failure_in_the_request_path_is_a_500_counted_as_an_error_not_ok() -> None:
    log = io.StringIO()
    async with stack([StubBehaviour()]) as s, aiohttp.ClientSession() as http:
        from thrifty.proxy.observe.logs import AccessLog

        s.sidecar.pipeline.access_log = AccessLog(log)

        async def broken(*args: object) -> None:
            raise RecursionError("maximum recursion depth exceeded")

        s.sidecar.pipeline.answer = broken  # type: ignore[method-assign]
        async with http.post(s.url + "/v1/chat/completions", data=_chat(messages=[USER]),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 500 and (await resp.json())["error"]["type"] == "server_error"
        reg = s.sidecar.metrics.registry
        assert reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "internal_error", "cache": "miss"}) == 1
        assert not reg.get_sample_value("thrifty_requests_total", {"tier": "small", "outcome": "ok", "cache": "miss"})
        line = json.loads(log.getvalue().splitlines()[-1])
        assert line["status"] == 500 and line["outcome"] == "internal_error"


def test_depth_limit_is_well_above_real_requests() -> None:
    assert MAX_JSON_DEPTH >= 128


def test_bounded_view_keeps_both_ends_and_tells_long_texts_apart() -> None:
    short = "a question" * 10
    assert bounded_view(short) == short
    head, tail = "h" * 5000, "t" * 5000
    a, b = bounded_view(head + "x" * 6_000_000 + tail), bounded_view(head + "y" * 6_000_000 + tail)
    assert len(a) < 2 * VIEW_EDGE_CHARS + 100 and a != b
    assert a.startswith("h" * VIEW_EDGE_CHARS) and a.endswith("t" * VIEW_EDGE_CHARS)


def test_query_text_of_a_6mb_prompt_is_bounded() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "w " * 3_100_000}]}
    ctx = RequestContext(request_id="r", endpoint="chat", body=body, model_alias="m", tenant="t", stream=False)
    text = query_text(ctx)
    assert text is not None and len(text) < 2 * VIEW_EDGE_CHARS + 100


@pytest.fixture
def captured_logs() -> io.StringIO:
    loggers = [logging.getLogger(n) for n in ("thrifty.proxy", "aiohttp")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    stream = io.StringIO()
    setup_logging("debug", stream)
    yield stream
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


async def test_a_malformed_authorization_line_is_never_logged(captured_logs: io.StringIO) -> None:
    """Handed-off connections are parsed by aiohttp, whose error log would quote the line."""
    import asyncio

    from tests.unit.test_proxy_front import _connect, _response

    secret = "sk-SECRET-0123456789"
    async with stack([StubBehaviour()]) as s:
        reader, writer = await _connect(s.url)
        # a first request on another path hands the connection to aiohttp; the second is malformed
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await _response(reader)
        assert status == 200
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret.encode()
                     + b"\x01\r\nContent-Length: 2\r\n\r\n{}")
        status, _, _ = await _response(reader)
        assert status == 400
        writer.close()
        await asyncio.sleep(0.1)
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "thrifty.proxy"):
        logging.getLogger(name).error("check %s", "x", exc_info=ValueError(f"Authorization: Bearer {secret}"))
    text = captured_logs.getvalue()
    assert secret not in text
    assert "ValueError" in text  # the failure itself is still reported
