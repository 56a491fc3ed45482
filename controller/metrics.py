"""The controller's own Prometheus metrics (docs/metrics.md, controller table).

`thrifty_controller_drift_alerts` (gauge) and `thrifty_controller_drift_alerts_total`
(counter) share a stem, which prometheus_client's Counter/Gauge classes refuse to
register together; a small collector exposes both (served in the text format, where
the counter's family is named with its `_total` suffix).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class DriftAlertCollector(Collector):
    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.raised: Tally[str] = Tally()

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("thrifty_controller_drift_alerts", "active drift alerts", labels=["signal"])
        for signal, n in sorted(self.active.items()):
            gauge.add_metric([signal], n)
        yield gauge
        counter = CounterMetricFamily("thrifty_controller_drift_alerts", "drift alerts raised", labels=["signal"])
        for signal, n in sorted(self.raised.items()):
            counter.add_metric([signal], n)
        yield counter


class ControllerMetrics:
    """One set per registry, so several controllers can live in one test process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sidecars = Gauge("thrifty_controller_sidecars", "connected sidecars", registry=registry)
        self.telemetry_rejected = Counter(
            "thrifty_controller_telemetry_rejected", "telemetry streams, windows or tier entries refused",
            ["reason"], registry=registry)
        self.desired = Gauge("thrifty_controller_desired_replicas", "autoscaler's decision", ["tier"], registry=registry)
        self.ready = Gauge("thrifty_controller_ready_replicas", "ready replicas from the Deployment status",
                           ["tier"], registry=registry)
        self.scale_actions = Counter("thrifty_controller_scale_actions", "scaling actions taken",
                                     ["tier", "direction"], registry=registry)
        self.drift = DriftAlertCollector()
        registry.register(self.drift)
        self.savings = Gauge("thrifty_controller_savings_ratio", "fleet savings over the last window", registry=registry)
        self.cost_per_1k = Gauge("thrifty_controller_cost_per_1k_requests_dollars", "cost per 1k requests",
                                 ["tier"], registry=registry)
        self.ttft_p95 = Gauge("thrifty_controller_slo_ttft_p95_seconds", "fleet TTFT p95", ["tier"], registry=registry)
        self.burn_rate = Gauge("thrifty_controller_slo_burn_rate", "TTFT misses over the last 10 min / what the "
                               "attainment target allows", ["tier"], registry=registry)
        self.capacity_factor = Gauge("thrifty_controller_capacity_factor", "per-replica capacity the autoscaler plans "
                                     "with, relative to its estimate (raised while the SLO budget is underspent)",
                                     ["tier"], registry=registry)
        self.paused = Gauge("thrifty_controller_autoscaling_paused", "1 when paused", registry=registry)
        self.leader = Gauge("thrifty_controller_is_leader", "1 when this replica holds the Lease", registry=registry)
