"""The quality loop's Prometheus series (docs/metrics.md), on the sidecar's registry.

Counters are plain-number children (`LeanCounter`, as on the request path); the gauges
that carry bounds are computed when Prometheus (or the telemetry client) reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from thrifty.proxy.observe.metrics import LeanCounter, _LeanCollector

Gauges = Callable[[], Iterable[tuple[str, str, list[str], list[tuple[list[str], float]]]]]


class _GaugeCollector(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, doc, labels, samples in self.gauges():
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for values, v in samples:
                fam.add_metric(values, v)
            yield fam


class QualityMetrics:
    def __init__(self, registry: CollectorRegistry, gauges: Gauges) -> None:
        self.calls = LeanCounter("thrifty_shadow_calls", "shadow calls to the reference tier", ["tier", "result"])
        self.skipped = LeanCounter("thrifty_shadow_skipped", "sampled requests not shadowed", ["reason"])
        self.cost = LeanCounter("thrifty_shadow_cost_dollars", "what the shadow calls cost (also in thrifty_cost_dollars_total)", ["tier"])
        self.verdicts = LeanCounter("thrifty_shadow_verdicts", "judged pairs", ["kind", "cheap_tier", "reference_tier", "judge"])
        self.score = LeanCounter("thrifty_shadow_score", "sum of the judged scores (0-1 each)", ["kind", "cheap_tier", "reference_tier", "judge"])
        self.feedback = LeanCounter("thrifty_feedback", "POST /v1/thrifty/feedback", ["result"])
        self.ledger_requests = LeanCounter("thrifty_ledger_requests", "requests in the savings ledger", ["group"])
        self.ledger_dollars = LeanCounter("thrifty_ledger_dollars", "their cost, shadow spend included", ["group"])
        self.ledger_dollars_sq = LeanCounter("thrifty_ledger_dollars_squared", "sum of squared per-request dollars", ["group"])
        self.ledger_baseline = LeanCounter("thrifty_ledger_baseline_dollars", "their modelled cost on the baseline tier", ["group"])
        self.ledger_judged = LeanCounter("thrifty_ledger_judged", "ledger requests with a quality score", ["group"])
        self.ledger_quality = LeanCounter("thrifty_ledger_quality", "sum of their quality scores", ["group"])
        registry.register(_LeanCollector([self.calls, self.skipped, self.cost, self.verdicts, self.score, self.feedback,
                                          self.ledger_requests, self.ledger_dollars, self.ledger_dollars_sq,
                                          self.ledger_baseline, self.ledger_judged, self.ledger_quality]))
        registry.register(_GaugeCollector(gauges))
