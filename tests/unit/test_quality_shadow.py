"""Shadow evaluation, feedback and the control group in the sidecar, against stub (simulator) replicas.

Tiers: `small` (cheap) and `large` (the reference / baseline). Without levers the tier asked
for answers, so a request for `alias-small` is a cheaper tier's answer that may be shadowed.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.unit.proxy_harness import stack
from thrifty.proxy.http import front
from thrifty.sim.stub_backend import StubBehaviour

ROOT = Path(__file__).parents[2]
CHAT = {"model": "alias-small", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8}
AUTH = {"Authorization": "Bearer key-a"}


def quality(rate: float = 1.0, control: float = 0.0, **shadow: object) -> dict:
    return {"quality": {"enabled": True, "shadow": {"rate": rate, **shadow}, "control": {"rate": control}}}


async def _wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _post(session: aiohttp.ClientSession, url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, Any]:
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers or AUTH) as r:
        return r.status, await r.json(), r.headers.copy()


def _sample(sidecar, name: str, **labels: str) -> float:
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_shadow_call_starts_only_after_the_reply_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[float] = []
    original = front.HttpConnection._write_reply

    def record(self, status, headers, body):  # type: ignore[no-untyped-def]
        original(self, status, headers, body)
        written.append(time.monotonic())

    monkeypatch.setattr(front.HttpConnection, "_write_reply", record)
    # the reference replica takes 0.6 s: a client that waited for it would see it
    behaviours = [StubBehaviour(), StubBehaviour(delay_s=0.6)]
    async with stack(behaviours, tiers=["small", "large"], **quality()) as s, aiohttp.ClientSession() as session:
        loop = s.sidecar.quality
        t0 = time.monotonic()
        status, body, headers = await _post(session, s.url, CHAT)
        elapsed = time.monotonic() - t0
        assert status == 200 and headers["X-Thrifty-Tier"] == "small"
        assert elapsed < 0.4, elapsed  # the reference's 0.6 s is not on the client's path
        await _wait(lambda: _sample(s.sidecar, "thrifty_shadow_verdicts_total", kind="router", cheap_tier="small",
                                    reference_tier="large", judge="exact") == 1)
        assert written and loop.shadow_started and loop.shadow_started[0] >= written[0]
        assert s.backends[1].stats.requests == 1  # the reference tier was asked once
        assert _sample(s.sidecar, "thrifty_shadow_score_total", kind="router", cheap_tier="small",
                       reference_tier="large", judge="exact") == 1.0  # stub answers agree
        # shadow spend is accounted, as its own series and in the reference tier's cost
        shadow_cost = _sample(s.sidecar, "thrifty_shadow_cost_dollars_total", tier="large")
        assert shadow_cost > 0
        assert _sample(s.sidecar, "thrifty_cost_dollars_total", tier="large") == pytest.approx(shadow_cost)
        # not a client request: not counted as one
        assert _sample(s.sidecar, "thrifty_requests_total", tier="large", outcome="ok", cache="miss") == 0
        [v] = loop.drain(10)
        assert (v.kind, v.cheap_tier, v.reference_tier, v.score) == ("router", "small", "large", 1.0)


async def test_disagreeing_answers_score_zero_and_reference_answers_are_not_shadowed() -> None:
    behaviours = [StubBehaviour(chunks=3), StubBehaviour(chunks=5)]  # different texts
    async with stack(behaviours, tiers=["small", "large"], **quality()) as s, aiohttp.ClientSession() as session:
        await _post(session, s.url, CHAT)
        await _post(session, s.url, {**CHAT, "model": "alias-large"})  # the reference itself: no shadow
        await _wait(lambda: s.sidecar.quality.inflight == 0 and _sample(
            s.sidecar, "thrifty_shadow_verdicts_total", kind="router", cheap_tier="small", reference_tier="large",
            judge="exact") == 1)
        assert s.backends[1].stats.requests == 2  # the client's large request + one shadow call
        assert _sample(s.sidecar, "thrifty_shadow_score_total", kind="router", cheap_tier="small",
                       reference_tier="large", judge="exact") == 0.0
        assert _sample(s.sidecar, "thrifty_quality_retained", cheap_tier="small", reference_tier="large", bound="mean") == 0.0


async def test_shadow_is_shed_first_when_the_bound_is_reached() -> None:
    behaviours = [StubBehaviour(), StubBehaviour(delay_s=0.5)]
    async with stack(behaviours, tiers=["small", "large"], **quality(max_inflight=1)) as s, aiohttp.ClientSession() as session:
        for _ in range(3):
            status, _, _ = await _post(session, s.url, CHAT)
            assert status == 200
        assert s.sidecar.quality.inflight == 1
        assert _sample(s.sidecar, "thrifty_shadow_skipped_total", reason="inflight") == 2
        await _wait(lambda: s.sidecar.quality.inflight == 0)


async def test_rate_zero_never_shadows() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **quality(rate=0.0)) as s, \
            aiohttp.ClientSession() as session:
        for _ in range(5):
            await _post(session, s.url, CHAT)
        await asyncio.sleep(0.05)
        assert s.backends[1].stats.requests == 0


@pytest.mark.parametrize("agree", [True, False])
async def test_a_streamed_answer_is_assembled_and_judged(agree: bool) -> None:
    """The client's stream is relayed untouched; the text it carried is what the judge compares."""
    behaviours = [StubBehaviour(chunks=4), StubBehaviour(chunks=4 if agree else 6)]
    async with stack(behaviours, tiers=["small", "large"], **quality()) as s, aiohttp.ClientSession() as session:
        async with session.post(s.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH) as r:
            assert r.status == 200 and r.headers["X-Thrifty-Tier"] == "small"
            raw = await r.read()
        assert raw.rstrip().endswith(b"data: [DONE]")
        await _wait(lambda: _sample(s.sidecar, "thrifty_shadow_verdicts_total", kind="router", cheap_tier="small",
                                    reference_tier="large", judge="exact") == 1)
        assert s.backends[1].stats.requests == 1  # one non-streaming shadow call to the reference
        assert _sample(s.sidecar, "thrifty_shadow_score_total", kind="router", cheap_tier="small",
                       reference_tier="large", judge="exact") == (1.0 if agree else 0.0)
        assert _sample(s.sidecar, "thrifty_shadow_skipped_total", reason="no_answer") == 0


async def test_feedback_scores_a_request_of_the_same_tenant_only() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **quality(judge="feedback")) as s, \
            aiohttp.ClientSession() as session:
        _, _, headers = await _post(session, s.url, CHAT)
        rid = headers["X-Request-Id"]
        url = s.url + "/v1/thrifty/feedback"
        async with session.post(url, json={"request_id": rid, "score": 0.25}, headers={"Authorization": "Bearer other"}) as r:
            assert r.status == 404 and (await r.json())["error"]["param"] == "request_id"
        for bad, param in (({"request_id": rid, "score": 2}, "score"), ({"score": 1}, "request_id"),
                           ({"request_id": rid, "score": True}, "score")):
            async with session.post(url, json=bad, headers=AUTH) as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == param
        async with session.post(url, data=b"{nope", headers=AUTH) as r:
            assert r.status == 400 and "JSON" in (await r.json())["error"]["message"]
        async with session.post(url, json={"request_id": rid, "score": 0.25}, headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["accepted"] is True
        async with session.post(url, json={"request_id": rid, "score": 0.25}, headers=AUTH) as r:
            assert r.status == 404  # one score per request
        assert s.backends[1].stats.requests == 0  # the feedback judge makes no shadow call
        [v] = s.sidecar.quality.drain(10)
        assert (v.cheap_tier, v.score) == ("small", 0.25)


async def test_control_group_takes_the_baseline_path_and_is_tagged() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **quality(rate=0.0, control=1.0)) as s, \
            aiohttp.ClientSession() as session:
        status, _, headers = await _post(session, s.url, {**CHAT, "model": "alias-large"})
        assert status == 200 and headers["X-Thrifty-Group"] == "control" and headers["X-Thrifty-Tier"] == "large"
        async with session.post(s.url + "/v1/chat/completions", json={**CHAT, "model": "alias-large", "stream": True},
                                headers=AUTH) as r:
            assert r.headers["X-Thrifty-Group"] == "control"
            await r.read()
        _, _, headers = await _post(session, s.url, CHAT)  # asked for a cheaper tier: not in the ledger
        assert "X-Thrifty-Group" not in headers
        assert _sample(s.sidecar, "thrifty_ledger_requests_total", group="control") == 2
        assert _sample(s.sidecar, "thrifty_ledger_requests_total", group="treated") == 0
        assert _sample(s.sidecar, "thrifty_ledger_dollars_total", group="control") > 0


def test_every_quality_metric_is_documented() -> None:
    async def names() -> set[str]:
        async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **quality(control=0.5)) as s, \
                aiohttp.ClientSession() as session:
            for _ in range(6):
                await _post(session, s.url, CHAT)
                await _post(session, s.url, {**CHAT, "model": "alias-large"})
            await _wait(lambda: s.sidecar.quality.inflight == 0)
            s.sidecar.quality.watch.observe("small", 1.0)
            async with session.post(s.url + "/v1/thrifty/feedback", json={"request_id": "x", "score": 1}, headers=AUTH):
                pass
            async with session.get(s.url + "/metrics") as r:
                text = await r.text()
        return {n for n in re.findall(r"^# TYPE (thrifty_\S+) ", text, re.M)}

    exported = asyncio.run(names())
    documented = set(re.findall(r"`(thrifty_[a-z0-9_]+)`", (ROOT / "docs" / "metrics.md").read_text()))
    ours = {n for n in exported if n.startswith(("thrifty_shadow", "thrifty_ledger", "thrifty_quality", "thrifty_feedback",
                                                 "thrifty_cache_false", "thrifty_cache_similarity"))}
    assert len(ours) >= 12, ours
    missing = {n for n in ours if n not in documented and n + "_total" not in documented}
    assert not missing, f"not in docs/metrics.md: {sorted(missing)}"


async def test_semantic_hits_are_shadowed_and_feed_the_cache_watch() -> None:
    from thrifty.proxy.levers.cost_levers import CostLevers
    from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder

    extra = {**quality(), "cache": {"exact": {"enabled": False}, "semantic": {"enabled": True, "sampled_tiers": ["large"]}}}
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **extra) as s, \
            aiohttp.ClientSession() as session:
        levers = CostLevers(s.sidecar.config, s.sidecar.metrics.registry, embedder=Embedder(HashedNgramEncoder(64)))
        s.sidecar.set_levers(levers)
        assert s.sidecar.quality.watch.semantic is levers.semantic
        body = {**CHAT, "model": "alias-large", "temperature": 0.7}
        _, _, first = await _post(session, s.url, body)
        assert "X-Thrifty-Cache" not in first
        _, _, second = await _post(session, s.url, body)
        assert second["X-Thrifty-Cache"] == "semantic"
        await _wait(lambda: s.sidecar.quality.inflight == 0 and _sample(
            s.sidecar, "thrifty_shadow_verdicts_total", kind="cache", cheap_tier="large", reference_tier="large",
            judge="exact") == 1)
        assert s.backends[1].stats.requests == 2  # the first answer + one shadow call, never cached
        assert s.sidecar.quality.watch.judged == {"large": 1}
        assert _sample(s.sidecar, "thrifty_cache_false_hit_rate", route="large", bound="mean") == 0.0
        assert _sample(s.sidecar, "thrifty_cache_similarity_floor") == levers.semantic.similarity_floor
        _, _, third = await _post(session, s.url, body)
        assert third["X-Thrifty-Cache"] == "semantic"  # the shadow's answer did not replace or add an entry
        assert len(levers.semantic) == 1
        await _wait(lambda: s.sidecar.quality.inflight == 0)
        await levers.aclose()


async def test_llm_judge_asks_the_reference_tier_twice_with_positions_swapped() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], **quality(judge="llm")) as s, \
            aiohttp.ClientSession() as session:
        s.backends[1].stats.keep_bodies = True
        await _post(session, s.url, CHAT)
        await _wait(lambda: s.sidecar.quality.inflight == 0 and s.backends[1].stats.requests == 3)
        shadow, first, second = s.backends[1].stats.bodies
        assert shadow["messages"] == CHAT["messages"] and shadow["model"] == "large-model" and "stream" not in shadow
        grading = [b["messages"][0]["content"] for b in (first, second)]
        assert all("Answer 1:" in g and "Answer 2:" in g and "What is 2+2?" in g for g in grading)
        assert first["temperature"] == 0 and first["max_tokens"] <= 8
        # the stub's "w0 w1 ..." is no grade: nothing is recorded rather than a guess
        assert _sample(s.sidecar, "thrifty_shadow_skipped_total", reason="unjudged") == 1
        assert s.sidecar.quality.drain(10) == []
        assert _sample(s.sidecar, "thrifty_shadow_calls_total", tier="large", result="ok") == 3  # all shadow spend
