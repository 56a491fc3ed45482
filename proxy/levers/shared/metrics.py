"""Prometheus series of the shared cache tier (docs/metrics.md); labels are fixed sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SharedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter("thrifty_shared_cache_lookups_total", "Shared-tier lookups (exact: Redis GET; semantic: mirror hits by origin)",
                               ["kind", "result"], registry=registry)
        self.writes = Counter("thrifty_shared_cache_writes_total", "Shared-tier writes", ["kind", "result"], registry=registry)
        self.sync_errors = Counter("thrifty_shared_cache_sync_errors_total", "Shared-tier Redis failures by operation",
                                   ["op"], registry=registry)
        self.mirror_lag = Histogram("thrifty_shared_cache_mirror_lag_seconds", "Delay from a pod's insert (stream id time) to this mirror applying it",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.up = Gauge("thrifty_shared_cache_up", "1 while the shared tier is reachable (breaker closed)", registry=registry)
        self.rebuild_seconds = Gauge("thrifty_shared_cache_rebuild_seconds", "Duration of the last mirror rebuild from Redis", registry=registry)
        self.up.set(0)
