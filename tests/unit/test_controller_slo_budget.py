"""The SLO error budget that lets the autoscaler run replicas hotter, on a virtual clock."""

from __future__ import annotations

import pytest

from thrifty.config import parse_config
from thrifty.controller.autoscaler import Autoscaler, TierObservation, TierPolicy
from thrifty.controller.service import ControlPlane
from thrifty.controller.slo_budget import SloBudget
from thrifty.wire.stats import Histogram, StatsWindow, TierStats


def _feed(budget: SloBudget, start: float, minutes: float, per_tick: int, missed: int, tick_s: float = 5.0) -> float:
    t = start
    for _ in range(int(minutes * 60 / tick_s)):
        t += tick_s
        budget.observe(t, per_tick, missed)
    return t


def test_an_underspent_budget_raises_the_factor_slowly_up_to_the_ceiling() -> None:
    b = SloBudget(target=0.99)
    t = _feed(b, 0.0, 10, per_tick=50, missed=0)
    assert 1.15 < b.factor < 1.3  # ~2% a minute, not a jump
    _feed(b, t, 60, per_tick=50, missed=0)
    assert b.factor == b.ceiling


def test_an_overspent_budget_drops_the_factor_back_within_minutes_but_not_below_the_floor() -> None:
    b = SloBudget(target=0.99, factor=1.4)
    t = _feed(b, 0.0, 2, per_tick=50, missed=2)  # 4% late: four times what 99% allows
    assert b.burn_rate(t, b.window_s) == pytest.approx(4.0)
    assert b.factor < 1.1
    _feed(b, t, 10, per_tick=50, missed=5)
    assert b.factor == b.floor == 1.0


def test_spending_between_half_and_all_of_the_budget_holds_the_factor_and_too_few_requests_say_nothing() -> None:
    held = SloBudget(target=0.99, factor=1.2)
    _feed(held, 0.0, 10, per_tick=1000, missed=7)  # 0.7% late: the budget is being used, not exceeded
    assert held.factor == 1.2
    quiet = SloBudget(target=0.99, factor=1.2)
    _feed(quiet, 0.0, 10, per_tick=0, missed=0)
    assert quiet.factor == 1.2 and quiet.burn_rate(600.0, 600.0) is None


def _obs(t: float, ready: int, rate: float, finished: int, missed: int) -> TierObservation:
    return TierObservation(time=t, ready=ready, running=10, token_rate=rate, input_rate=rate / 2, output_rate=rate / 2,
                           ttft_p95_s=0.4, ttft_finished=finished, ttft_missed=missed)


@pytest.mark.parametrize(("missed", "expected"), [(0, 3), (2, 4)])
def test_the_autoscaler_spends_an_unused_budget_on_fewer_replicas(missed: int, expected: int) -> None:
    """15k tok/s over 4k tok/s per replica is 3.75 replicas: 4 at the estimate; with no misses
    for a quarter of an hour the budget lets 3 replicas carry it, with 2% misses it does not."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, down_stabilization_s=120, slo_target=0.99)
    a = Autoscaler([p], initial={"t": 4})
    for i in range(12 * 25):
        t = i * 5.0
        a.decide(t, {"t": _obs(t, a.target("t"), 15000.0, 100, missed)})
    assert a.target("t") == expected


def test_histogram_counts_what_lies_above_a_latency() -> None:
    h = Histogram(bounds=(1.0, 2.0, 4.0))
    for v in [0.5] * 10 + [1.5] * 10 + [3.0] * 10 + [9.0] * 10:
        h.observe(v)
    assert h.count_above(2.0) == 20
    assert h.count_above(3.0) == pytest.approx(15)  # half of the 2-4 s bucket, linearly
    assert h.count_above(0.0) == 40 and h.count_above(100.0) == 10  # +Inf counts as above


def test_the_control_plane_counts_each_request_once_into_the_budget() -> None:
    config = parse_config({"tiers": [{"name": "t", "model": "m", "price": {"gpu_hour": 1.0}}],
                           "slo": {"ttft_p95_ms": 2000, "ttft_attainment": 0.95}})
    plane = ControlPlane(config, clock=lambda: 0.0)
    assert plane.autoscaler.budget("t").target == 0.95
    for start in (0.0, 10.0, 20.0):
        stats = TierStats("t", requests=10, errors=1)
        stats.ttft.observe(0.3, 8)
        stats.ttft.observe(3.0, 1)
        plane.ingest("sidecar", StatsWindow(start, start + 9.0, [stats]))
    first = plane.observations(30.0)["t"]
    assert (first.ttft_finished, first.ttft_missed) == (30, 6)  # 9 timed + 1 failed, per 10 s bucket
    again = plane.observations(35.0)["t"]
    assert (again.ttft_finished, again.ttft_missed) == (0, 0)


@pytest.mark.parametrize(("missed", "scales_up"), [(0, False), (3, True), (None, True)])
def test_ttft_near_the_slo_adds_replicas_only_when_requests_miss_it(missed: int | None, scales_up: bool) -> None:
    """Long prompts keep TTFT p95 at 1.7 s of a 2 s SLO on idle replicas: with every request
    inside the SLO that is service time and replicas would not help; with 3% missing (or no
    miss counts reported at all) it is treated as queueing and the tier grows at once."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=10000, target_concurrency=100,
                   slo_ttft_s=2.0, slo_target=0.99)
    a = Autoscaler([p], initial={"t": 3})
    for i in range(24):
        t = i * 5.0
        o = _obs(t, a.target("t"), 5000.0, 0 if missed is None else 100, missed or 0)
        o.ttft_p95_s = 1.7
        a.decide(t, {"t": o})
    assert (a.target("t") > 3) is scales_up


def test_length_aware_ttft_slo_grows_with_the_prompt() -> None:
    from thrifty.controller.slo_budget import ttft_slo_s

    assert ttft_slo_s(2.0, 0.0, 7000) == 2.0  # off: flat
    assert ttft_slo_s(2.0, 0.25, 7000) == pytest.approx(3.75)
    assert ttft_slo_s(2.0, 0.25, 50) < ttft_slo_s(2.0, 0.25, 7000)
