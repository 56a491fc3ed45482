"""The autoscaling policy on a virtual clock."""

from __future__ import annotations

import pytest

from thrifty.controller.autoscaler import Autoscaler, CapacityEstimator, TierObservation, TierPolicy


def _obs(t: float, ready: int, running: float, rate: float, waiting: float = 0.0, **kw) -> TierObservation:
    return TierObservation(time=t, ready=ready, running=running, waiting=waiting, token_rate=rate,
                           kv_usage=0.0, **kw)


def test_fast_scale_up_in_one_step() -> None:
    a = Autoscaler([TierPolicy("large", min_replicas=1, max_replicas=20, target_concurrency=10)], initial={"large": 2})
    a.decide(0, {"large": _obs(0, 2, 20, 1000)})
    d = a.decide(5, {"large": _obs(5, 2, 60, 3000)})
    assert len(d) == 1 and d[0].to_replicas >= 6 and d[0].direction == "up"


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    p = TierPolicy("large", min_replicas=1, max_replicas=20, target_concurrency=10, down_stabilization_s=120)
    a = Autoscaler([p], initial={"large": 6})
    downs = []
    for i in range(120):
        t = i * 5.0
        downs += a.decide(t, {"large": _obs(t, a.target("large"), 10, 500)})
    assert downs and all(d.direction == "down" for d in downs)
    assert downs[0].time >= 120
    assert a.target("large") <= 2
    # in steps: a quarter of the replicas at most (at least one), one step a minute
    assert all(d.from_replicas - d.to_replicas == max(1, int(d.from_replicas * 0.25)) for d in downs)
    assert all(b.time - a_.time >= 60 for a_, b in zip(downs, downs[1:]))


def test_no_scale_down_while_ttft_uses_over_half_the_slo() -> None:
    p = TierPolicy("large", min_replicas=1, max_replicas=20, target_concurrency=10, down_stabilization_s=120, slo_ttft_s=2.0)
    a = Autoscaler([p], initial={"large": 6})
    decisions = []
    for i in range(60):  # light load, but requests already wait 1.2 s for their first token
        t = i * 5.0
        decisions += a.decide(t, {"large": _obs(t, a.target("large"), 10, 500, ttft_p95_s=1.2)})
    assert decisions == [] and a.target("large") == 6
    for i in range(60, 160):  # the same load with TTFT back to 0.4 s: now it releases replicas
        t = i * 5.0
        decisions += a.decide(t, {"large": _obs(t, a.target("large"), 10, 500, ttft_p95_s=0.4)})
    assert decisions and all(d.direction == "down" for d in decisions) and a.target("large") <= 2


def test_bounds_pin_and_pause() -> None:
    a = Autoscaler([TierPolicy("t", min_replicas=1, max_replicas=3, target_concurrency=1)], initial={"t": 1})
    a.decide(0, {"t": _obs(0, 1, 50, 100)})
    assert a.target("t") == 3  # max
    a.pin("t", 4, 5)
    a.decide(5, {"t": _obs(5, 3, 50, 100)})
    assert a.target("t") == 5
    a.paused = True
    a.pin("t", None, None)
    assert a.decide(10, {"t": _obs(10, 5, 50, 100)}) == []
    with pytest.raises(ValueError):
        a.pin("t", 3, 2)


def test_scale_to_zero_and_wake_on_queue() -> None:
    p = TierPolicy("t", min_replicas=0, max_replicas=4, scale_to_zero=True, idle_to_zero_s=60,
                   down_stabilization_s=30, target_concurrency=4)
    a = Autoscaler([p], initial={"t": 1})
    for i in range(30):
        t = i * 5.0
        a.decide(t, {"t": _obs(t, a.target("t"), 0, 0)})
    assert a.target("t") == 0
    d = a.decide(200, {"t": TierObservation(time=200, ready=0, queue_depth=3)})
    assert d and d[0].to_replicas == 1 and "zero" in d[0].reason


def test_routing_share_shift_moves_capacity_between_tiers() -> None:
    tiers = [TierPolicy(n, min_replicas=1, max_replicas=20, target_concurrency=10, down_stabilization_s=30)
             for n in ("small", "large")]
    a = Autoscaler(tiers, initial={"small": 2, "large": 6})
    obs = lambda t: {"small": _obs(t, a.target("small"), 15, 2000), "large": _obs(t, a.target("large"), 50, 8000)}  # noqa: E731
    for i in range(4):
        a.decide(i * 5.0, obs(i * 5.0))
    small_before, large_before = a.target("small"), a.target("large")
    a.expect_shares({"small": 0.8, "large": 0.2})  # e.g. a lower router threshold
    moved = []
    for i in range(4, 20):
        moved += a.decide(i * 5.0, obs(i * 5.0))
    assert a.target("small") > small_before
    assert a.target("large") < large_before
    assert {d.tier for d in moved} == {"small", "large"}


def _served(t: float, ready: int, served: float, waiting: float = 0.0, ttft: float | None = 0.5) -> TierObservation:
    return TierObservation(time=t, ready=ready, waiting=waiting, served_token_rate=served, ttft_p95_s=ttft)


def test_capacity_is_learned_from_saturated_replicas_and_bounded_by_slo_proofs() -> None:
    est = CapacityEstimator(sample_s=30)
    assert est.capacity(5000) == 5000  # nothing seen: the prior
    for i in range(8):  # 2 replicas serving 14k tok/s within the SLO: at least 7k each
        est.observe(i * 5.0, _served(i * 5.0, 2, 14000), slo_ttft_s=2)
    assert est.capacity(5000) == 7000
    for i in range(8, 40):  # queued all along at 6k each: that is the capacity now (mix changed)
        est.observe(i * 5.0, _served(i * 5.0, 2, 12000, waiting=10), slo_ttft_s=2)
    assert 6000 <= est.capacity(5000) < 6500


def test_capacity_ignores_windows_with_a_changing_fleet_or_one_queued_replica() -> None:
    est = CapacityEstimator(sample_s=30)
    for i in range(40):  # 3 replicas, one queued behind a long prompt, the rest idle: no saturation
        est.observe(i * 5.0, _served(i * 5.0, 3, 3000, waiting=1), slo_ttft_s=10)
    assert est.measured is None
    t = 200.0
    for i in range(40):  # saturated, but a new replica becomes ready every 25 s: never a stable window
        ready = 2 + i // 5
        est.observe(t + i * 5.0, _served(t + i * 5.0, ready, 12000, waiting=4 * ready), slo_ttft_s=2)
    assert est.measured is None
    for i in range(40, 60):  # the fleet holds still: now the saturated samples count
        est.observe(t + i * 5.0, _served(t + i * 5.0, 10, 60000, waiting=40), slo_ttft_s=2)
    assert est.measured is not None and 5900 <= est.measured <= 6100


def test_token_demand_over_capacity_sets_the_target() -> None:
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=0.8,
                   target_concurrency=1000)
    a = Autoscaler([p], initial={"t": 1})
    for i in range(6):  # steady 16k tok/s: 16000 / (4000 x 0.8) = 5 replicas
        a.decide(i * 5.0, {"t": _obs(i * 5.0, a.target("t"), 10, 16000)})
    assert a.target("t") == 5


def test_requests_still_running_count_as_demand_through_the_engines_processed_tokens() -> None:
    # Finished requests report 8k tok/s while the engines process 16k (a ramp piles requests up
    # running): the demand is at least what the engines process, and the mix stays the finished one.
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=0.8,
                   target_concurrency=1000)
    lagging = Autoscaler([p], initial={"t": 1})
    for i in range(6):
        t = i * 5.0
        lagging.decide(t, {"t": _obs(t, lagging.target("t"), 10, 8000, input_rate=6000, output_rate=2000,
                                     processed_token_rate=16000)})
    assert lagging.target("t") == 5  # 16000 / (4000 x 0.8); the finished rate alone asks for 3
    quiet = Autoscaler([p], initial={"t": 1})
    for i in range(6):  # engines processing less than finished (a drained window) changes nothing
        t = i * 5.0
        quiet.decide(t, {"t": _obs(t, quiet.target("t"), 10, 8000, processed_token_rate=6000)})
    assert quiet.target("t") == 3


def test_demand_is_the_recent_burst_level_not_the_last_reading() -> None:
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, down_stabilization_s=30, burst_window_s=600, burst_quantile=0.9,
                   down_step_fraction=1.0, down_step_s=0.0,  # demand estimation only: scale down in one step
                   burstiness_window_s=0)  # the burst level alone; the burstiness headroom has its own test
    a = Autoscaler([p], initial={"t": 1})
    t = 0.0
    for i in range(120):  # 10 minutes at 8k tok/s with a 16k tok/s burst every minute (10 s of it)
        t = i * 5.0
        rate = 16000.0 if i % 12 == 0 else 8000.0
        a.decide(t, {"t": _obs(t, a.target("t"), 10, rate, input_rate=rate / 2, output_rate=rate / 2)})
    # 16k tok/s is 1 reading in 12: the 90th percentile stays at the 8k level => 2 replicas...
    assert a.target("t") == 2
    held = []
    for i in range(120, 240):  # ...10 s of burst every 45 s is a level to provision for, between bursts too
        t = i * 5.0
        rate = 16000.0 if i % 9 in (0, 1) else 8000.0
        a.decide(t, {"t": _obs(t, a.target("t"), 10, rate, input_rate=rate / 2, output_rate=rate / 2)})
        held.append(a.target("t"))
    assert min(held[-60:]) >= 4


def test_production_policies_take_their_capacity_prior_from_the_named_profile() -> None:
    """A tier naming a performance profile starts with that profile's per-token costs at its
    target concurrency; a real engine without one has no prior (capacity is learned)."""
    from thrifty.config import parse_config
    from thrifty.controller.service import tier_policies
    from thrifty.profiles import engine_costs, get_profile

    tiers = [
        {"name": "simulated", "model": "m", "price": {"gpu_hour": 1.0},
         "engine": {"kind": "sim", "sim_profile": "a100-llama3-8b-fp8", "max_num_seqs": 128}},
        {"name": "real", "model": "m2", "price": {"gpu_hour": 1.0}, "engine": {"kind": "vllm"}},
        {"name": "named", "model": "m3", "price": {"gpu_hour": 1.0},
         "engine": {"kind": "external", "capacity_profile": "h100-llama3-70b-fp8-tp2"}},
    ]
    policies = {p.name: p for p in tier_policies(parse_config({"tiers": tiers}))}
    expected = engine_costs(get_profile("a100-llama3-8b-fp8"), batch=128)
    assert policies["simulated"].target_concurrency == 128  # max_num_seqs: KV and ITL allow it
    assert policies["real"].target_concurrency == 256  # no profile: the engine's max_num_seqs
    assert policies["simulated"].decode_s_per_token == pytest.approx(expected["decode_s_per_token"])
    assert policies["real"].prefill_s_per_token == 0 and policies["real"].decode_s_per_token == 0
    tp2 = get_profile("h100-llama3-70b-fp8-tp2")
    assert policies["named"].prefill_s_per_token == tp2.prefill_token_s
    # the prior turns into a compute-side replica count before any telemetry
    scaler = Autoscaler([policies["named"]])
    obs = TierObservation(time=0.0, ready=1, token_rate=20000.0, input_rate=18000.0, output_rate=2000.0)
    scaler.decide(0.0, {"named": obs})
    assert scaler.target("named") > 1


def _run_rates(p: TierPolicy, rates: list[float], **kw) -> Autoscaler:
    a = Autoscaler([p], initial={p.name: 2})
    for i, rate in enumerate(rates):
        t = i * 5.0
        a.decide(t, {p.name: _obs(t, a.target(p.name), 10, rate, input_rate=rate / 2, output_rate=rate / 2, **kw)})
    return a


def test_burstiness_measured_online_sets_standing_headroom() -> None:
    """Same mean rate, steady vs 30 s bursts at 3x: the bursty tier keeps more replicas standing,
    because bursts shorter than a start-up delay can only be provisioned for."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, burst_quantile=0.5)
    steady = _run_rates(p, [8000.0] * 600)
    bursty = _run_rates(p, [16000.0 if (i // 6) % 4 == 0 else 16000.0 / 3 for i in range(600)])
    assert steady.target("t") == 2
    assert bursty.target("t") >= 4


def test_long_prompts_get_replicas_for_the_ttft_slo_the_token_rate_would_not_ask_for() -> None:
    """Prefill queueing, not throughput, decides TTFT for 7k-token prompts: at the same token rate
    the tier with long prompts is given more replicas than the tier with short ones."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=20000, target_utilization=1.0,
                   target_concurrency=1000, prefill_s_per_token=0.00009, decode_s_per_token=0.0003,
                   burstiness_window_s=0)
    short = _run_rates(p, [20000.0] * 100, mean_prompt_tokens=500.0)
    long = _run_rates(p, [20000.0] * 100, mean_prompt_tokens=7000.0)
    assert short.target("t") < long.target("t")
    d = long.decide(500.0, {"t": _obs(500.0, 2, 10, 20000.0, input_rate=10000.0, output_rate=10000.0,
                                      mean_prompt_tokens=7000.0)})
    assert not d or "predicted TTFT misses" in d[0].reason


def test_a_fresh_controllers_rate_ramp_is_not_read_as_burstiness() -> None:
    """The first readings climb from 0 as the rate window fills; read as burstiness, that ramp
    held 3x standing headroom for the next hour. Ramp then steady plans like steady alone."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, burst_quantile=0.5, down_stabilization_s=60)
    ramp = [7600.0 * i / 18 for i in range(18)]
    a = _run_rates(p, ramp + [7600.0] * 150)
    assert a.target("t") == 2


def test_a_fresh_controllers_rate_ramp_is_not_read_as_growth() -> None:
    """The forecast's trend grows the concurrency and KV floors a start-up ahead; in the first
    two start-up delays the trend is the rate window filling, not traffic (the cost bench's FP8
    70B tier went 2 -> 5 replicas in its first 20 s of control where 2 held the SLO). The same
    ramp later, on a known level, does grow them."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=1e9, target_concurrency=100)

    def run(rates: list[float]) -> Autoscaler:
        a = Autoscaler([p], initial={"t": 2})
        for i, rate in enumerate(rates):
            a.decide(i * 5.0, {"t": _obs(i * 5.0, a.target("t"), 150, rate)})
        return a

    ramp = [1000.0 + 6600.0 * i / 12 for i in range(12)]
    assert run(ramp).target("t") == 2  # 1.5 replicas of sequences x 1.1 headroom
    assert run([1000.0] * 40 + ramp).target("t") >= 3


def _feed(a: Autoscaler, t0: float, n: int, rate: float, missed: int, **kw) -> float:
    t = t0
    for _ in range(n):
        a.decide(t, {"t": _obs(t, a.target("t"), 10, rate, ttft_finished=200, ttft_missed=missed, **kw)})
        t += 5.0
    return t


def test_a_count_that_missed_the_slo_is_not_planned_again_at_that_load() -> None:
    """The capacity plan says 2 replicas; at 2 the SLO is missed (5% of requests): one more is
    added, and the tier does not step back to 2 at that load while the miss is remembered,
    but does at a load well under it. One record adds at most one replica over the count that missed."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, down_stabilization_s=60, burstiness_window_s=0, miss_memory_s=1800)
    a = Autoscaler([p], initial={"t": 2})
    t = _feed(a, 0.0, 40, 7000.0, 0)  # past the warm-up, within the SLO
    assert a.target("t") == 2
    t = _feed(a, t, 6, 7000.0, 10)  # 5% missed over a minute at 2 replicas
    assert a.target("t") == 3
    t = _feed(a, t, 120, 7000.0, 0)  # 10 minutes at that load, no misses: the 3rd stays
    assert a.target("t") == 3
    t = _feed(a, t, 150, 2000.0, 0)  # well under the load that missed: back down
    assert a.target("t") <= 2
    b = Autoscaler([p], initial={"t": 2})
    t = _feed(b, 0.0, 40, 7000.0, 0)
    t = _feed(b, t, 6, 7000.0, 200)  # every request missed: still only one more than the count that missed
    assert b.target("t") == 3


def test_a_scale_down_that_queued_is_not_repeated_at_that_load() -> None:
    """Down from 3 to 2 on the capacity plan; at 2, TTFT p95 nears the SLO with the budget burning
    (1.5x, under the 2x that records a miss): one more comes back, and the stable window does not
    take it away again at that load (the flapping Mooncake's replay showed), but does at a lower one."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=4000, target_utilization=1.0,
                   target_concurrency=1000, down_stabilization_s=60, burstiness_window_s=0, miss_memory_s=1800,
                   slo_ttft_s=2.0)
    a = Autoscaler([p], initial={"t": 3})
    t = _feed(a, 0.0, 60, 7000.0, 0, ttft_p95_s=0.4)  # past the warm-up: the plan says 2
    assert a.target("t") == 2
    t = _feed(a, t, 12, 7000.0, 3, ttft_p95_s=1.9)  # queueing at 2: 1.5% missed for a minute
    assert a.target("t") == 3
    t = _feed(a, t, 120, 7000.0, 0, ttft_p95_s=0.4)  # 10 minutes at that load, within the SLO
    assert a.target("t") == 3
    t = _feed(a, t, 150, 2000.0, 0, ttft_p95_s=0.4)  # well under it: back down
    assert a.target("t") <= 2


def test_one_replica_has_no_second_choice_in_the_ttft_floor() -> None:
    """At one replica a prompt waits behind the one in progress with probability rho, not rho^2
    (there is no less busy replica to pick): a load the two-choice tail would pass at 1 replica
    (0.1% predicted misses) gets 2 (1.7% at 1)."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=20000, target_utilization=1.0,
                   target_concurrency=1000, prefill_s_per_token=0.00009, decode_s_per_token=0.0003,
                   burstiness_window_s=0, down_stabilization_s=60)
    a = Autoscaler([p], initial={"t": 1})
    for i in range(60):
        t = i * 5.0
        a.decide(t, {"t": _obs(t, a.target("t"), 10, 4300.0, input_rate=4000.0, output_rate=300.0,
                               mean_prompt_tokens=4000.0)})
    assert a.target("t") == 2


def test_ttft_does_not_escalate_in_the_minute_after_a_replica_became_ready() -> None:
    """The p95 window still shows the minute before the new replica: escalating on it again overshoots.
    A queue still escalates at once, and a p95 still over the SLO a minute later does too."""
    p = TierPolicy("t", min_replicas=1, max_replicas=20, capacity_prior_tokens_s=100000, target_utilization=1.0,
                   target_concurrency=1000, burstiness_window_s=0, slo_ttft_s=2.0)
    a = Autoscaler([p], initial={"t": 3})
    slow = dict(ttft_p95_s=1.9, ttft_finished=200, ttft_missed=10)
    a.decide(0.0, {"t": _obs(0.0, 3, 10, 1000.0, **slow)})
    assert a.target("t") == 4  # near the SLO, budget burning: one more
    a.decide(90.0, {"t": _obs(90.0, 3, 10, 1000.0, starting=1, **slow)})
    a.decide(95.0, {"t": _obs(95.0, 4, 10, 1000.0, **slow)})  # it is ready; p95 is last minute's
    assert a.target("t") == 4
    a.decide(100.0, {"t": _obs(100.0, 4, 10, 1000.0, queue_depth=5, **slow)})
    assert a.target("t") == 5  # a queue is now, not last minute
    b = Autoscaler([p], initial={"t": 3})
    b.decide(0.0, {"t": _obs(0.0, 3, 10, 1000.0, **slow)})
    b.decide(95.0, {"t": _obs(95.0, 4, 10, 1000.0, **slow)})
    b.decide(160.0, {"t": _obs(160.0, 4, 10, 1000.0, **slow)})
    assert b.target("t") == 5  # a minute on, still near the SLO: one more
