"""The sidecar's Prometheus metrics: exactly the `thrifty_*` sidecar rows of docs/metrics.md.

Kept in a private `CollectorRegistry` so several sidecars can live in one process
(tests) and the telemetry client reads the same registry. The request path's counters
and histograms are plain Python numbers in pre-bound label children (one attribute
add or one `bisect` per update, no locks: prometheus_client's own metric objects cost
several times that on every request) exposed through one collector at scrape time.
Per-replica gauges are read from the pool at scrape time instead of being written on
every request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from thrifty.proxy.balance.admission import Admission
from thrifty.proxy.balance.pool import ReplicaPool

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
        # Engine counters, re-exported as gauges holding the replica's value (a replica
        # restart resets them): only for replicas whose /metrics has them.
        counters = {
            "prompt_tokens": GaugeMetricFamily("thrifty_replica_prompt_tokens", "scraped vllm:prompt_tokens_total", labels=["tier", "replica"]),
            "generation_tokens": GaugeMetricFamily("thrifty_replica_generation_tokens", "scraped vllm:generation_tokens_total", labels=["tier", "replica"]),
            "spec_draft_tokens": GaugeMetricFamily("thrifty_replica_spec_draft_tokens", "scraped vllm:spec_decode_num_draft_tokens_total", labels=["tier", "replica"]),
            "spec_accepted_tokens": GaugeMetricFamily("thrifty_replica_spec_accepted_tokens", "scraped vllm:spec_decode_num_accepted_tokens_total", labels=["tier", "replica"]),
        }
        for r in self.pool.all():
            labels = [r.tier, r.url]
            families["up"].add_metric(labels, 1.0 if r.healthy else 0.0)
            families["waiting"].add_metric(labels, r.waiting)
            families["running"].add_metric(labels, r.running)
            families["kv"].add_metric(labels, r.kv_usage)
            families["inflight"].add_metric(labels, r.inflight)
            for attr, fam in counters.items():
                value = getattr(r, attr)
                if value is not None:
                    fam.add_metric(labels, value)
        queue = GaugeMetricFamily("thrifty_queue_depth", "requests waiting in admission", labels=["tier"])
        depths = self.queue_depth()
        for tier in self.pool.tiers:
            queue.add_metric([tier], depths.get(tier, 0))
        yield from families.values()
        yield from counters.values()
        yield queue


class _LaneCollector(Collector):
    """Admission queue depth per tier and lane, and flex waiters shed to make room, read at scrape time."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("thrifty_lane_queue_depth", "requests waiting in admission, by service_tier lane",
                                  labels=["tier", "lane"])
        for (tier, lane), n in self.admission.lane_depths().items():
            depth.add_metric([tier, lane], n)
        shed = CounterMetricFamily("thrifty_lane_shed_for_room", "flex waiters shed to queue a request of a better lane",
                                   labels=["lane"])
        for lane, n in self.admission.shed_for_room.items():
            shed.add_metric([lane], n)
        yield depth
        yield shed


class _GaugeCollector(Collector):
    """One unlabelled gauge read from live state at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.read())


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LeanCounter:
    """A labelled counter whose children are plain numbers (the event loop is the only writer)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *labels: str) -> CounterChild:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = CounterChild()
        return child

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in list(self.children.items()):
            fam.add_metric(list(labels), child.value)
        return fam


class LeanHistogram:
    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.buckets = tuple(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *labels: str) -> HistogramChild:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = HistogramChild(self.buckets)
        return child

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in list(self.children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, running = [], 0
            for bound, n in zip((*self.buckets, float("inf")), counts):
                running += n
                cumulative.append((_le(bound), running))
            fam.add_metric(list(labels), cumulative, total)
        return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _LeanCollector(Collector):
    def __init__(self, metrics: list[LeanCounter | LeanHistogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        for m in self.metrics:
            yield m.family()


@dataclass(slots=True)
class TierMetrics:
    """One tier's children, bound once so the request path never looks labels up."""

    ttft: HistogramChild
    duration: HistogramChild
    itl: HistogramChild
    tokens_input: CounterChild
    tokens_output: CounterChild
    tokens_cached: CounterChild
    cost: CounterChild
    baseline_cost: CounterChild
    cache_baseline_cost: CounterChild
    admission_wait: HistogramChild
    retries: CounterChild


class SidecarMetrics:
    def __init__(self, tiers: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = LeanCounter("thrifty_requests", "requests finished", ["tier", "outcome", "cache"])
        self.ttft = LeanHistogram("thrifty_ttft_seconds", "time to first byte of the answer as the client sees it", ["tier"], LATENCY_BUCKETS)
        self.duration = LeanHistogram("thrifty_request_duration_seconds", "end-to-end", ["tier"], LATENCY_BUCKETS)
        self.itl = LeanHistogram("thrifty_itl_seconds", "gap between streamed chunks", ["tier"], ITL_BUCKETS)
        self.tokens = LeanCounter("thrifty_tokens", "tokens from the engine's usage", ["tier", "kind"])
        self.cost = LeanCounter("thrifty_cost_dollars", "what the requests cost (cache hits cost 0)", ["tier"])
        self.baseline_cost = LeanCounter("thrifty_baseline_cost_dollars", "what the same requests would cost on the baseline tier without caches", ["tier"])
        self.cache_baseline_cost = LeanCounter("thrifty_cache_baseline_cost_dollars", "the part of the baseline cost that cache hits answered", ["tier"])
        self.savings = LeanCounter("thrifty_savings_dollars", "baseline minus actual, by lever", ["lever"])
        self.admission_wait = LeanHistogram("thrifty_admission_wait_seconds", "time spent in the admission queue", ["tier"], LATENCY_BUCKETS)
        self.picks = LeanCounter("thrifty_balancer_picks", "balancer decisions", ["tier", "replica", "reason"])
        self.retries = LeanCounter("thrifty_retries", "retried on another replica before the first byte", ["tier"])
        self.escalations = LeanCounter("thrifty_escalations", "escalations after an error/timeout", ["from_tier", "to_tier"])
        self.lane_requests = LeanCounter("thrifty_lane_requests", "requests finished, by service_tier lane", ["lane", "outcome"])
        self.batch_lines = LeanCounter("thrifty_batch_lines", "batch lines run: done, failed, or deferred (shed for capacity, retried later)", ["result"])
        self.registry.register(_LeanCollector([
            self.requests, self.ttft, self.duration, self.itl, self.tokens, self.cost, self.baseline_cost, self.cache_baseline_cost, self.savings,
            self.admission_wait, self.picks, self.retries, self.escalations, self.lane_requests, self.batch_lines]))
        self.tiers: dict[str, TierMetrics] = {t: self._bind(t) for t in tiers}

    def _bind(self, tier: str) -> TierMetrics:
        return TierMetrics(
            ttft=self.ttft.labels(tier), duration=self.duration.labels(tier), itl=self.itl.labels(tier),
            tokens_input=self.tokens.labels(tier, "input"), tokens_output=self.tokens.labels(tier, "output"),
            tokens_cached=self.tokens.labels(tier, "cached"), cost=self.cost.labels(tier),
            baseline_cost=self.baseline_cost.labels(tier), cache_baseline_cost=self.cache_baseline_cost.labels(tier),
            admission_wait=self.admission_wait.labels(tier),
            retries=self.retries.labels(tier))

    def tier(self, tier: str) -> TierMetrics:
        m = self.tiers.get(tier)
        if m is None:
            m = self.tiers[tier] = self._bind(tier)
        return m

    def attach_pool(self, pool: ReplicaPool, queue_depth: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_PoolCollector(pool, queue_depth))

    def batch_lines_done(self, result: str) -> None:
        self.batch_lines.labels(result).inc()

    def attach_batch(self, backlog: Callable[[], int]) -> None:
        self.registry.register(_GaugeCollector("thrifty_batch_backlog", "batch lines left to run in active batches", backlog))

    def attach_lanes(self, admission: Admission) -> None:
        self.registry.register(_LaneCollector(admission))

    def child(self, metric: LeanCounter | LeanHistogram, *labels: str):  # type: ignore[no-untyped-def]
        """`metric.labels(*labels)` (children are memoised by the metric itself)."""
        return metric.labels(*labels)
