"""Admission lanes from `service_tier`: priority first, tenants in turn, flex shed first and waiting longer,
priority never routed down, and a clear 400 for a value OpenAI does not define."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.unit.proxy_harness import stack
from thrifty.proxy.balance.admission import Admission
from thrifty.proxy.balance.lanes import lane_of
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.levers.protocol import NoLevers
from thrifty.sim.stub_backend import StubBehaviour


class Gate:
    """A tier with no free replica until `release` hands out one slot."""

    def __init__(self) -> None:
        self.slots = 0

    def try_pick(self) -> str | None:
        if self.slots:
            self.slots -= 1
            return "replica"
        return None

    def release(self, admission: Admission) -> None:
        self.slots += 1
        admission.wake("t")


async def queue_up(admission: Admission, gate: Gate, order: list[str], name: str, lane: str, tenant: str) -> None:
    await admission.admit("t", gate.try_pick, why_not=lambda: "busy", lane=lane, tenant=tenant)
    order.append(name)


async def drain(admission: Admission, gate: Gate, n: int) -> None:
    for _ in range(n):
        gate.release(admission)
        await asyncio.sleep(0.01)


async def test_priority_then_default_then_flex() -> None:
    admission, gate, order = Admission(["t"], max_queue=10, max_wait_s=5), Gate(), []
    tasks = []
    for name, lane in (("f", "flex"), ("d", "default"), ("p", "priority")):
        tasks.append(asyncio.create_task(queue_up(admission, gate, order, name, lane, "a")))
        await asyncio.sleep(0.01)
    assert admission.lane_depths() == {("t", "priority"): 1, ("t", "default"): 1, ("t", "flex"): 1, ("t", "batch"): 0}
    await drain(admission, gate, 3)
    await asyncio.gather(*tasks)
    assert order == ["p", "d", "f"]


async def test_tenants_take_turns_within_a_lane() -> None:
    admission, gate, order = Admission(["t"], max_queue=10, max_wait_s=5), Gate(), []
    tasks = [asyncio.create_task(queue_up(admission, gate, order, f"a{i}", "default", "a")) for i in range(4)]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(queue_up(admission, gate, order, "b0", "default", "b")))
    await asyncio.sleep(0.01)
    await drain(admission, gate, 5)
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "a1", "a2", "a3"]  # b's one request is not behind all of a's


async def test_full_queue_sheds_newest_flex_for_a_better_lane() -> None:
    admission, gate, order = Admission(["t"], max_queue=2, max_wait_s=5), Gate(), []
    flex = [asyncio.create_task(queue_up(admission, gate, order, f"f{i}", "flex", "a")) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as refused:  # another flex: nothing to shed, refused at once
        await admission.admit("t", gate.try_pick, why_not=lambda: "busy", lane="flex", tenant="b")
    assert refused.value.status == 429
    default = asyncio.create_task(queue_up(admission, gate, order, "d", "default", "b"))
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as shed:
        await flex[1]
    assert shed.value.status == 429 and "flex" in shed.value.message
    assert admission.shed_for_room["default"] == 1
    await drain(admission, gate, 2)
    await asyncio.gather(default, flex[0])
    assert order == ["d", "f0"]


async def test_flex_waits_longer_before_it_is_shed() -> None:
    admission, gate = Admission(["t"], max_queue=10, max_wait_s=0.1, flex_max_wait_s=0.4), Gate()
    waited = {}

    async def timed(lane: str) -> None:
        start = time.monotonic()
        with pytest.raises(ApiError) as exc:
            await admission.admit("t", gate.try_pick, why_not=lambda: "busy", lane=lane, tenant="a")
        assert exc.value.status == 503
        waited[lane] = time.monotonic() - start

    await asyncio.gather(timed("default"), timed("flex"))
    assert 0.09 < waited["default"] < 0.3 and 0.39 < waited["flex"] < 0.8


def test_service_tier_values() -> None:
    assert [lane_of({"service_tier": v}) for v in ("auto", "default", "scale", "flex", "priority")] == \
        ["default", "default", "default", "flex", "priority"]
    assert lane_of({}) == lane_of({"service_tier": None}) == "default"
    for bad in ("gold", 3, {}):
        with pytest.raises(ApiError) as exc:
            lane_of({"service_tier": bad})
        assert exc.value.status == 400 and exc.value.param == "service_tier"


class CheapestRouter(NoLevers):
    """Routes every request to the cheapest tier it may use."""

    async def route(self, ctx, tiers):  # type: ignore[no-untyped-def]
        return tiers[0]


async def test_priority_is_never_routed_down_and_lanes_are_counted() -> None:
    async with stack([StubBehaviour(), StubBehaviour()], tiers=["small", "large"], levers=CheapestRouter()) as s, \
            aiohttp.ClientSession() as http:
        chat = {"model": "alias-large", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        for tier in ("priority", "flex", None):
            body = chat if tier is None else {**chat, "service_tier": tier}
            async with http.post(s.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["X-Thrifty-Tier"] == ("large" if tier == "priority" else "small")
        async with http.post(s.url + "/v1/chat/completions", json={**chat, "service_tier": "gold"}) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["param"] == "service_tier" and error["type"] == "invalid_request_error"
        reg = s.sidecar.metrics.registry
        for lane in ("priority", "flex", "default"):
            assert reg.get_sample_value("thrifty_lane_requests_total", {"lane": lane, "outcome": "ok"}) == 1
        assert reg.get_sample_value("thrifty_lane_queue_depth", {"tier": "large", "lane": "flex"}) == 0
