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
    view = FleetView(["large"], bucket_s=10)
    for sid in ("a", "b"):
        t = TierStats("large", requests=10, dollars=1.0, baseline_dollars=2.0, queue_depth=3,
                      replicas=[ReplicaStats("http://r1", waiting=4, running=8, kv_cache_usage=0.5, inflight=2,
                                             spec_draft_tokens=100, spec_accepted_tokens=60)])
        t.ttft.observe(0.2, 10)
        view.ingest(sid, StatsWindow(0.0, 5.0, [t]))
    s = view.summary("large", 10.0, 10.0)
    assert s.requests == 20 and s.savings_ratio == pytest.approx(0.5)
    assert s.spec_acceptance == pytest.approx(0.6)
    assert view.queue_depth("large") == 6
    [(rep, inflight)] = view.replicas("large", 10.0)
    assert rep.waiting == 4 and inflight == 4
    view.forget_sidecar("a")
    assert view.queue_depth("large") == 3
