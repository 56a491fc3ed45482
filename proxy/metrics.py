"""The sidecar's Prometheus metrics: exactly the `thrifty_*` sidecar rows of docs/metrics.md.

Kept in a private `CollectorRegistry` so several sidecars can live in one process
(tests) and the telemetry client reads the same registry. Labelled children used on the
hot path are memoised; per-replica gauges are read from the pool at scrape time instead
of being written on every request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from thrifty.proxy.pool import ReplicaPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)


class _PoolCollector(Collector):
    """Per-replica and queue gauges, read from live state when Prometheus scrapes."""

    def __init__(self, pool: ReplicaPool, queue_depth: Callable[[], dict[str, int]]) -> None:
        self.pool = pool
        self.queue_depth = queue_depth

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            "up": GaugeMetricFamily("thrifty_replica_up", "1 healthy, 0 not", labels=["tier", "replica"]),
            "waiting": GaugeMetricFamily("thrifty_replica_waiting", "scraped vllm:num_requests_waiting", labels=["tier", "replica"]),
            "running": GaugeMetricFamily("thrifty_replica_running", "scraped vllm:num_requests_running", labels=["tier", "replica"]),
            "kv": GaugeMetricFamily("thrifty_replica_kv_cache_usage", "scraped vllm:kv_cache_usage_perc (0-1)", labels=["tier", "replica"]),
            "inflight": GaugeMetricFamily("thrifty_replica_inflight", "requests this sidecar has open to the replica", labels=["tier", "replica"]),
        }
        for r in self.pool.all():
            labels = [r.tier, r.url]
            families["up"].add_metric(labels, 1.0 if r.healthy else 0.0)
            families["waiting"].add_metric(labels, r.waiting)
            families["running"].add_metric(labels, r.running)
            families["kv"].add_metric(labels, r.kv_usage)
            families["inflight"].add_metric(labels, r.inflight)
        queue = GaugeMetricFamily("thrifty_queue_depth", "requests waiting in admission", labels=["tier"])
        depths = self.queue_depth()
        for tier in self.pool.tiers:
            queue.add_metric([tier], depths.get(tier, 0))
        yield from families.values()
        yield queue


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("thrifty_requests_total", "requests finished", ["tier", "outcome", "cache"], registry=r)
        self.ttft = Histogram("thrifty_ttft_seconds", "time to first byte of the answer as the client sees it", ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("thrifty_request_duration_seconds", "end-to-end", ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("thrifty_itl_seconds", "gap between streamed chunks", ["tier"], buckets=ITL_BUCKETS, registry=r)
        self.tokens = Counter("thrifty_tokens_total", "tokens from the engine's usage", ["tier", "kind"], registry=r)
        self.cost = Counter("thrifty_cost_dollars_total", "what the requests cost (cache hits cost 0)", ["tier"], registry=r)
        self.baseline_cost = Counter("thrifty_baseline_cost_dollars_total", "what the same requests would cost on the baseline tier without caches", ["tier"], registry=r)
        self.savings = Counter("thrifty_savings_dollars_total", "baseline minus actual, by lever", ["lever"], registry=r)
        self.admission_wait = Histogram("thrifty_admission_wait_seconds", "time spent in the admission queue", ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.picks = Counter("thrifty_balancer_picks_total", "balancer decisions", ["tier", "replica", "reason"], registry=r)
        self.retries = Counter("thrifty_retries_total", "retried on another replica before the first byte", ["tier"], registry=r)
        self.escalations = Counter("thrifty_escalations_total", "escalations after an error/timeout", ["from_tier", "to_tier"], registry=r)
        self._children: dict[tuple[object, ...], object] = {}

    def attach_pool(self, pool: ReplicaPool, queue_depth: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PoolCollector(pool, queue_depth))

    def child(self, metric: Counter | Histogram, *labels: str):  # type: ignore[no-untyped-def]
        """`metric.labels(*labels)`, memoised (labels are bounded sets, so the dict is too)."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c
