"""Fleet view aggregation and histogram quantiles."""

from __future__ import annotations

import pytest

from thrifty.controller.fleet import FleetView
from thrifty.wire.stats import Histogram, ReplicaStats, StatsWindow, TierStats


def test_histogram_quantile_interpolates() -> None:
    h = Histogram(bounds=(0.1, 0.2, 0.4))
    for v in [0.05] * 50 + [0.15] * 40 + [0.3] * 10:
        h.observe(v)
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert 0.2 < h.quantile(0.95) <= 0.4
    assert Histogram().quantile(0.95) is None


def test_two_sidecars_sum_counters_and_share_replica_gauges() -> None:
    from thrifty.wire.codec import window_from_pb, window_to_pb

    view = FleetView(["large"], bucket_s=10)
    for sid in ("a", "b"):
        t = TierStats("large", requests=10, dollars=1.0, baseline_dollars=2.0, cache_baseline_dollars=0.5, queue_depth=3,
                      replicas=[ReplicaStats("http://r1", waiting=4, running=8, kv_cache_usage=0.5, inflight=2,
                                             spec_draft_tokens=100, spec_accepted_tokens=60)])
        t.ttft.observe(0.2, 10)
        view.ingest(sid, window_from_pb(window_to_pb(StatsWindow(0.0, 5.0, [t]))))
    s = view.summary("large", 10.0, 10.0)
    assert s.requests == 20 and s.savings_ratio == pytest.approx(0.5) and s.cache_baseline_dollars == pytest.approx(1.0)
    assert s.spec_acceptance == pytest.approx(0.6)
    assert view.queue_depth("large") == 6
    [(rep, inflight)] = view.replicas("large", 10.0)
    assert rep.waiting == 4 and inflight == 4
    view.forget_sidecar("a")
    assert view.queue_depth("large") == 3


def test_served_rate_and_arrival_split_come_from_telemetry() -> None:
    """The controller's observation carries what the capacity estimator needs: engine-served
    tokens/s (replica counter deltas) and the prompt/generated arrival split."""
    from thrifty.controller.observe import tier_observation
    from thrifty.wire.codec import window_from_pb, window_to_pb

    view = FleetView(["large"], bucket_s=10)
    for end in (5.0, 10.0, 15.0, 20.0, 25.0, 30.0):
        t = TierStats("large", requests=2, input_tokens=600, output_tokens=300,
                      replicas=[ReplicaStats("http://r1", running=4, prompt_tokens=700.0, generation_tokens=300.0),
                                ReplicaStats("http://r2", running=4, prompt_tokens=500.0, generation_tokens=500.0)])
        view.ingest("a", window_from_pb(window_to_pb(StatsWindow(end - 5.0, end, [t]))))
    o = tier_observation(view, "large", 31.0, target=3, rate_span_s=30.0)
    assert o.served_token_rate == pytest.approx(2000 / 5)  # the two buckets completed by t=31: 4 windows, 20 s
    # over the arrival rates' span (30 s here): the three buckets completed by t=31, 6 windows in 30 s
    assert o.processed_token_rate == pytest.approx(6 * 2000 / 30)
    # buckets starting in [1, 31): the windows ending at 10 ... 30
    assert o.input_rate == pytest.approx(5 * 600 / 30) and o.output_rate == pytest.approx(5 * 300 / 30)
    assert o.ready == 2 and o.starting == 1 and o.running == 8
    # A sidecar whose replicas export no token counters: no served rate, not a zero one.
    bare = FleetView(["large"], bucket_s=10)
    for end in (5.0, 15.0, 25.0):
        bare.ingest("a", window_from_pb(window_to_pb(StatsWindow(end - 5.0, end, [
            TierStats("large", requests=1, replicas=[ReplicaStats("http://r1", running=1)])]))))
    bare_o = tier_observation(bare, "large", 31.0, target=1)
    assert bare_o.served_token_rate is None and bare_o.processed_token_rate is None


def test_client_errors_travel_apart_and_leave_the_hit_rates() -> None:
    """A prompt over the context (the engine's 400) can be neither a hit nor a miss: the sidecar
    reports it apart from the errors, and the hit rates count only what could be answered."""
    from thrifty.proxy.observe.metrics import SidecarMetrics
    from thrifty.proxy.observe.telemetry import read_registry, window_between
    from thrifty.wire.codec import window_from_pb, window_to_pb

    metrics = SidecarMetrics(["small"])
    metrics.requests.labels("small", "ok", "exact").inc()
    metrics.requests.labels("small", "ok", "miss").inc()
    metrics.requests.labels("small", "client_error", "miss").inc(2)
    metrics.requests.labels("small", "upstream_error", "miss").inc()
    window = window_between(read_registry(metrics.registry), {}, 0.0, 5.0, 1, False)
    view = FleetView(["small"], bucket_s=10)
    view.ingest("a", window_from_pb(window_to_pb(window)))
    s = view.summary("small", 10.0, 10.0)
    assert (s.requests, s.client_errors, s.errors, s.answerable) == (5, 2, 1, 3)
    assert s.exact_hit_rate == pytest.approx(1 / 3)
