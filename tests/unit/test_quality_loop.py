"""The quality loop across the wire: verdicts in telemetry, intake checks, the controller's
threshold, the quality-drop alert, the ledger in the fleet API, and the whole loop on loopback
(sidecar on stub replicas -> shadow verdict -> gRPC -> controller -> policy -> sidecar router)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.unit.proxy_harness import stack
from thrifty.config import parse_config
from thrifty.controller.grpc_server import start_grpc
from thrifty.controller.intake import Rejected, check_window
from thrifty.controller.service import ControlPlane
from thrifty.proxy.observe.telemetry import TelemetryClient
from thrifty.sim.stub_backend import StubBehaviour
from thrifty.wire.codec import window_from_pb, window_to_pb
from thrifty.wire.quality import LedgerGroup, ShadowVerdict, measured_savings, wilson
from thrifty.wire.stats import StatsWindow

CONFIG = {
    "tiers": [
        {"name": "small", "model": "s", "price": {"input_per_1m": 0.1, "output_per_1m": 0.4}},
        {"name": "large", "model": "l", "price": {"input_per_1m": 2.0, "output_per_1m": 8.0}},
    ],
}
TIERS = frozenset({"small", "large"})
TOKEN = b"telemetry-token-0123456789"


def verdicts(n: int, ease_lo: float, ease_hi: float, score: float, kind: str = "router") -> list[ShadowVerdict]:
    return [ShadowVerdict(kind, "small", "large", 0, ease_lo + (ease_hi - ease_lo) * i / max(n - 1, 1), score)
            for i in range(n)]


def window(now: float, vs: list[ShadowVerdict], ledger: list[LedgerGroup] | None = None) -> StatsWindow:
    return StatsWindow(window_start=now - 5, window_end=now, verdicts=vs, ledger=ledger or [])


# -- wire and intake --------------------------------------------------------------------
def test_verdicts_and_ledger_survive_the_codec() -> None:
    w = window(100.0, verdicts(3, 0.2, 0.9, 1.0), [LedgerGroup("control", 2, 0.5, 0.13, 0.5, 1, 1.0)])
    back = window_from_pb(window_to_pb(w))
    assert back.verdicts == w.verdicts and back.ledger == w.ledger


@pytest.mark.parametrize("bad", [
    ShadowVerdict("router", "small", "large", 0, 0.5, 1.5),
    ShadowVerdict("router", "nope", "large", 0, 0.5, 1.0),
    ShadowVerdict("magic", "small", "large", 0, 0.5, 1.0),
    ShadowVerdict("router", "small", "large", 0, float("nan"), 1.0),
    ShadowVerdict("router", "small", "large", -7, 0.5, 1.0),
])
def test_intake_rejects_bad_verdicts(bad: ShadowVerdict) -> None:
    with pytest.raises(Rejected, match="verdict"):
        check_window(window(time.time(), [bad]), TIERS, time.time(), max_skew_s=30, max_age_s=3600)


def test_intake_bounds_the_verdict_list_and_the_ledger() -> None:
    now = time.time()
    with pytest.raises(Rejected, match="more than 1000 verdicts"):
        check_window(window(now, verdicts(1001, 0, 1, 1.0)), TIERS, now, max_skew_s=30, max_age_s=3600)
    with pytest.raises(Rejected, match="ledger group"):
        check_window(window(now, [], [LedgerGroup("other", 1)]), TIERS, now, max_skew_s=30, max_age_s=3600)
    with pytest.raises(Rejected, match="at most once"):
        check_window(window(now, [], [LedgerGroup("control", 1), LedgerGroup("control", 1)]), TIERS, now,
                     max_skew_s=30, max_age_s=3600)
    with pytest.raises(Rejected, match="quality_sum"):
        check_window(window(now, [], [LedgerGroup("treated", 1, judged=1, quality_sum=3.0)]), TIERS, now,
                     max_skew_s=30, max_age_s=3600)


def test_bounds() -> None:
    lo, hi = wilson(95, 100, 0.9)
    assert lo < 0.95 < hi and hi - lo < 0.1
    assert wilson(0, 0, 0.9) == (0.0, 1.0)
    control = LedgerGroup("control", 100, 100 * 1.0, 100 * 1.01, 0, 0, 0)
    treated = LedgerGroup("treated", 1000, 1000 * 0.3, 1000 * 0.1, 1000 * 1.0, 0, 0)
    s = measured_savings(control, treated, 0.9)
    assert s["measured"] == pytest.approx(0.7) and s["measured_lower"] < 0.7 < s["measured_upper"]
    assert s["modelled"] == pytest.approx(0.7)


# -- the controller -------------------------------------------------------------------------
async def test_controller_pushes_the_calibrated_threshold_and_alerts_on_a_drop() -> None:
    plane = ControlPlane(parse_config(CONFIG))
    assert plane.policy["router_threshold"] is None
    q = plane.connect("sidecar-1")
    q.get_nowait()
    now = time.time()
    await plane.tick(now)
    assert plane.policy["router_threshold"] is None  # no verdict yet: the configured threshold stays
    # easy prompts (ease >= 0.5) hold up, hard ones do not: the threshold lands between
    plane.ingest("sidecar-1", window(now, verdicts(200, 0.5, 1.0, 1.0) + verdicts(200, 0.0, 0.49, 0.0)))
    await plane.tick(now + 5)
    first = plane.policy["router_threshold"]
    assert first is not None and 0.4 <= first <= 0.6, first
    pushed = q.get_nowait()
    assert pushed["router_threshold"] == first
    view = plane.fleet_json(now + 5)["quality"]
    assert view["threshold_in_force"] == first and view["chosen_cheap_tier"] == "small"
    [pair] = view["pairs"]
    assert pair["verdicts"] == 400 and pair["quality"] == pytest.approx(0.5) and pair["calibrated"]["threshold"] == pytest.approx(first, abs=1e-3)
    # then the cheap tier gets worse on easy prompts too: a drop, announced, and the threshold rises
    plane.ingest("sidecar-1", window(now + 10, verdicts(600, 0.5, 1.0, 0.0)))
    await plane.tick(now + 10)
    alerts = plane.alerts_json()["alerts"]
    assert [a["signal"] for a in alerts] == ["quality_drop"] and alerts[0]["tier"] == "small" and alerts[0]["active"]
    assert plane.policy["router_threshold"] > first
    assert plane.metrics.registry.get_sample_value("thrifty_controller_quality_drop", {"cheap_tier": "small"}) == 1
    assert plane.metrics.registry.get_sample_value("thrifty_controller_drift_alerts_total", {"signal": "quality_drop"}) == 1


async def test_thresholds_per_cluster_reach_the_router() -> None:
    from thrifty.wire.codec import policy_from_pb, policy_to_pb

    plane = ControlPlane(parse_config(CONFIG))
    now = time.time()
    good = [ShadowVerdict("router", "small", "large", 0, v.ease, 1.0) for v in verdicts(200, 0.0, 1.0, 1.0)]
    bad = [ShadowVerdict("router", "small", "large", 1, v.ease, 0.0) for v in verdicts(200, 0.0, 1.0, 0.0)]
    few = [ShadowVerdict("router", "small", "large", 2, 0.9, 1.0)] * 3
    plane.ingest("s", window(now, good + bad + few))
    await plane.tick(now)
    clusters = plane.policy["router_cluster_thresholds"]
    assert set(clusters) == {0, 1, 2}
    assert clusters[0] < 0.2 and clusters[1] > 0.9 and clusters[2] == 1.0  # cluster 2: too little evidence, conservative
    assert plane.fleet_json(now)["quality"]["cluster_thresholds"]["2"] == 1.0
    policy = policy_from_pb(policy_to_pb(plane.policy))
    assert policy["router_cluster_thresholds"] == clusters

    from tests.unit.test_levers_cost_levers import config as levers_config
    from thrifty.proxy.levers.cost_levers import CostLevers
    from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder
    from prometheus_client import CollectorRegistry

    class _Model:  # a router model fake: fixed ease, cluster from the centroids
        embedder = HashedNgramEncoder(64).name
        centroids = __import__("numpy").eye(2, 64)
        threshold = 0.5

        def ease_score(self, vector, text):  # noqa: ANN001, ANN201
            return 0.6

    levers = CostLevers(levers_config(), CollectorRegistry(), embedder=Embedder(HashedNgramEncoder(64)), router_model=_Model())
    levers.apply_policy(policy)
    assert levers.cluster_thresholds == clusters and levers.router_threshold == plane.policy["router_threshold"]
    from thrifty.proxy.request.context import RequestContext

    for cluster, expect in ((0, "small"), (1, "large")):
        ctx = RequestContext(request_id="r", endpoint="chat", body={"messages": [{"role": "user", "content": "hi"}]},
                             requested_tier="large", tenant="t")
        levers._router_embedding = lambda c, t, k=cluster: _vector(k)  # type: ignore[method-assign]
        assert await levers.route(ctx, ["small", "large"]) == expect and ctx.router_cluster == cluster
    await levers.aclose()


async def _vector(cluster: int):  # noqa: ANN202
    import numpy as np

    v = np.zeros(64, dtype=np.float32)
    v[cluster] = 1.0
    return v


async def test_fleet_api_shows_measured_beside_modelled_savings() -> None:
    plane = ControlPlane(parse_config(CONFIG))
    now = time.time()
    ledger = [LedgerGroup("control", 50, 50 * 0.01, 50 * 0.0001, 50 * 0.01, 5, 5.0),
              LedgerGroup("treated", 950, 950 * 0.004, 950 * 0.00002, 950 * 0.01, 95, 90.0)]
    plane.ingest("sidecar-1", window(now, verdicts(20, 0.5, 1.0, 1.0), ledger))
    await plane.tick(now)
    led = plane.fleet_json(now)["quality"]["ledger"]
    assert led["control"]["requests"] == 50 and led["treated"]["quality"]["mean"] == pytest.approx(90 / 95)
    assert led["treated"]["quality"]["lower"] < 90 / 95 < led["treated"]["quality"]["upper"]
    assert led["savings"]["measured"] == pytest.approx(0.6) and led["savings"]["modelled"] == pytest.approx(0.6)
    assert led["savings"]["measured_lower"] <= 0.6 <= led["savings"]["measured_upper"]
    assert plane.metrics.registry.get_sample_value("thrifty_controller_ledger_savings_ratio", {"kind": "measured"}) == pytest.approx(0.6)


# -- the whole loop on loopback -----------------------------------------------------------------
@pytest.fixture(scope="module")
def router_model():
    from tests.unit.test_levers_router import small_set
    from thrifty.proxy.levers.embedder import HashedNgramEncoder
    from thrifty.training.router_fit import train_router

    return train_router([small_set()], HashedNgramEncoder(64).encode, embedder_name=HashedNgramEncoder(64).name, l2=1.0)


async def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_shadow_verdicts_move_the_threshold_the_sidecar_applies(router_model) -> None:
    """The unit-test twin of tests/engine/test_quality_loop_engine.py: the cheap tier's stub answers
    differ from the reference's, so every judged pair scores 0 and the controller's threshold must
    rise to send everything to the reference tier, which the sidecar's router then does."""
    from thrifty.proxy.levers.cost_levers import CostLevers
    from thrifty.proxy.levers.embedder import Embedder, HashedNgramEncoder

    plane = ControlPlane(parse_config(CONFIG))
    server, port = await start_grpc(plane, "127.0.0.1:0", token=TOKEN)
    behaviours = [StubBehaviour(chunks=3), StubBehaviour(chunks=5)]
    extra = {"router": {"enabled": True, "threshold": 0.3, "hard_prompts": False}, "quality": {"enabled": True, "shadow": {"rate": 1.0, "max_inflight": 64}}}
    try:
        async with stack(behaviours, tiers=["small", "large"], **extra) as s, aiohttp.ClientSession() as session:
            s.sidecar.set_levers(CostLevers(s.sidecar.config, s.sidecar.metrics.registry,
                                            embedder=Embedder(HashedNgramEncoder(64)), router_model=router_model))
            client = TelemetryClient(f"127.0.0.1:{port}", s.sidecar.metrics.registry, "sidecar-e2e", s.sidecar.apply_policy,
                                     interval_s=0.05, token=TOKEN, verdicts=s.sidecar.quality)
            await client.start()
            try:
                await _wait(lambda: client.connected)
                assert s.sidecar.levers.router_threshold == 0.3
                async def serve_all() -> list[str]:
                    served = []
                    for i in range(40):
                        prompt = f"What is {i} plus {i + 1}?" if i % 2 else f"Prove that the group of order {i} is abelian"
                        body = {"model": "alias-large", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
                        async with session.post(s.url + "/v1/chat/completions", json=body,
                                                headers={"Authorization": "Bearer k"}) as r:
                            assert r.status == 200
                            served.append(r.headers["X-Thrifty-Tier"])
                        await asyncio.sleep(0.01)
                    return served

                before = await serve_all()
                assert before.count("small") >= 10  # the router sends a good share to the cheap tier at 0.3
                await _wait(lambda: s.sidecar.quality.inflight == 0)
                # shadow requests reached the reference tier (beyond the client's own) and verdicts the controller
                assert s.backends[1].stats.requests > before.count("large")
                await _wait(lambda: plane.quality.verdicts >= 30)
                await plane.tick()
                threshold = plane.policy["router_threshold"]
                assert threshold >= 0.9, threshold  # every judged cheap answer failed: (nearly) all to the reference
                await _wait(lambda: s.sidecar.levers.router_threshold == threshold)  # pushed and applied
                s.sidecar.quality.settings.shadow.rate = 0.0
                after = await serve_all()
                assert after.count("small") <= 2 < before.count("small")
            finally:
                await client.stop()
    finally:
        await server.stop(None)


async def test_controller_quality_metrics_are_documented() -> None:
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    plane = ControlPlane(parse_config(CONFIG))
    now = time.time()
    plane.ingest("s", window(now, verdicts(20, 0.5, 1.0, 1.0), [LedgerGroup("control", 3, 0.03, 0.0003, 0.03, 1, 1.0),
                                                               LedgerGroup("treated", 3, 0.01, 0.00004, 0.03, 1, 1.0)]))
    await plane.tick(now)
    text = generate_latest(plane.metrics.registry).decode()
    names = {n for n in re.findall(r"^# TYPE (thrifty_controller_\S+) ", text, re.M)
             if "quality" in n or "ledger" in n or "router_threshold" in n}
    assert len(names) == 6, names
    documented = set(re.findall(r"`(thrifty_[a-z0-9_]+)`", (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()))
    assert names <= documented, names - documented
