"""The shared (Redis) cache tier's figures from a sidecar's registry, over the wire, into
the fleet view and `GET /api/v1/fleet`'s `fleet.shared_cache` (docs/contracts.md)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from thrifty.config import parse_config
from thrifty.controller.fleet import FleetView
from thrifty.controller.intake import Rejected
from thrifty.controller.service import ControlPlane
from thrifty.proxy.levers.shared.metrics import SharedMetrics
from thrifty.proxy.observe.telemetry import read_registry, read_shared, window_between
from thrifty.wire.codec import window_from_pb, window_to_pb
from thrifty.wire.stats import Histogram, SharedCacheStats, StatsWindow, TierStats

T0 = 1_700_000_000.0
CONFIG = {"tiers": [{"name": "small", "model": "s", "price": {"gpu_hour": 0.5}}]}


def lag(*values: float) -> Histogram:
    h = Histogram(bounds=(0.01, 0.05, 0.1))
    for v in values:
        h.observe(v)
    return h


def test_codec_round_trip_keeps_the_shared_tier_and_its_absence() -> None:
    shared = SharedCacheStats(up=True, exact_hits=7, semantic_hits=3, sync_errors=2, mirror_lag=lag(0.02, 0.08))
    back = window_from_pb(window_to_pb(StatsWindow(1.0, 2.0, [TierStats("small", requests=5)], shared_cache=shared)))
    assert back.shared_cache == shared
    down = window_from_pb(window_to_pb(StatsWindow(1.0, 2.0, shared_cache=SharedCacheStats())))
    assert down.shared_cache is not None and not down.shared_cache.up  # a tier that is down is still a tier
    assert window_from_pb(window_to_pb(StatsWindow(1.0, 2.0))).shared_cache is None


def test_sidecar_window_carries_deltas_of_its_shared_metrics() -> None:
    registry = CollectorRegistry()
    assert window_between(read_registry(registry), {}, 0, 1, 1, False,
                          shared_now=read_shared(registry)).shared_cache is None  # no shared tier configured
    m = SharedMetrics(registry)
    before = read_shared(registry)
    m.up.set(1)
    m.lookups.labels("exact", "hit").inc(4)
    m.lookups.labels("exact", "miss").inc(9)
    m.lookups.labels("semantic", "hit_remote").inc(2)
    m.lookups.labels("semantic", "hit_local").inc(5)  # this pod's own entry: not a shared-tier hit
    m.sync_errors.labels("read").inc()
    m.sync_errors.labels("stream").inc(2)
    m.mirror_lag.observe(0.03)
    mid = read_shared(registry)
    w = window_between({}, {}, 0, 1, 1, False, shared_now=mid, shared_before=before).shared_cache
    assert w is not None and w.up and (w.exact_hits, w.semantic_hits, w.sync_errors) == (4, 2, 3)
    assert w.mirror_lag.count == 1 and w.mirror_lag.sum == pytest.approx(0.03)
    m.up.set(0)
    m.lookups.labels("exact", "hit").inc()
    w2 = window_between({}, {}, 1, 2, 2, False, shared_now=read_shared(registry), shared_before=mid).shared_cache
    assert w2 is not None and not w2.up and (w2.exact_hits, w2.semantic_hits, w2.sync_errors) == (1, 0, 0)
    assert w2.mirror_lag.count == 0


def test_fleet_sums_shared_counters_and_counts_pods_up() -> None:
    view = FleetView(["small"], bucket_s=10)
    assert view.shared_summary(10.0, 10.0) is None
    view.ingest("a", StatsWindow(0, 5, [TierStats("small", requests=60)],
                                 shared_cache=SharedCacheStats(up=True, exact_hits=6, semantic_hits=3, mirror_lag=lag(*[0.02] * 98, 0.09, 0.09))))
    view.ingest("b", StatsWindow(0, 5, [TierStats("small", requests=40)],
                                 shared_cache=SharedCacheStats(up=False, exact_hits=1, sync_errors=4)))
    view.ingest("c", StatsWindow(0, 5, [TierStats("small", requests=100)]))  # no shared tier: requests only
    s = view.shared_summary(10.0, 10.0)
    assert s is not None and (s.pods, s.pods_up) == (2, 1)
    assert (s.totals.exact_hits, s.totals.semantic_hits, s.totals.sync_errors) == (7, 3, 4)
    assert s.hit_rate == pytest.approx(10 / 200)
    assert s.mirror_lag_p99 == pytest.approx(0.075) and s.mirror_lag_mean == pytest.approx((0.02 * 98 + 0.18) / 100)
    view.forget_sidecar("b")
    assert view.shared_summary(10.0, 10.0).pods == 1
    assert view.shared_summary(200.0, 10.0) is None  # nothing in the span and no pod reporting lately


def test_fleet_json_shared_cache_is_null_without_a_shared_tier_and_filled_with_one() -> None:
    clock = [T0]
    plane = ControlPlane(parse_config(CONFIG), clock=lambda: clock[0])
    plane.receive("a", StatsWindow(T0 - 10, T0 - 1, [TierStats("small", requests=50)]))
    assert plane.fleet_json()["fleet"]["shared_cache"] is None
    plane.receive("a", StatsWindow(T0 - 10, T0 - 1, [TierStats("small", requests=50)],
                                   shared_cache=SharedCacheStats(up=True, exact_hits=5, semantic_hits=5, mirror_lag=lag(0.04))))
    sc = plane.fleet_json()["fleet"]["shared_cache"]
    assert sc["pods"] == 1 and sc["pods_up"] == 1 and sc["sync_errors"] == 0
    assert sc["hit_rate"] == pytest.approx(10 / 100)
    assert 10 < sc["mirror_lag_p99_ms"] <= 50 and sc["mirror_lag_mean_ms"] == pytest.approx(40)


@pytest.mark.parametrize("bad", [
    SharedCacheStats(exact_hits=10**12),
    SharedCacheStats(sync_errors=-1),
    SharedCacheStats(mirror_lag=Histogram(bounds=(0.1, math.nan), counts=[0, 0, 0])),
    SharedCacheStats(mirror_lag=Histogram(bounds=(0.1,), counts=[1, 0], count=5)),
])
def test_intake_rejects_shared_figures_out_of_range(bad: SharedCacheStats) -> None:
    plane = ControlPlane(parse_config(CONFIG), clock=lambda: T0)
    with pytest.raises(Rejected, match="shared_cache"):
        plane.receive("a", StatsWindow(T0 - 10, T0 - 1, [], shared_cache=bad))
    assert plane.fleet.shared_summary(T0, 60.0) is None
