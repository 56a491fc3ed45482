"""The controller's half of the quality loop: verdicts in, router threshold out, ledger and alerts.

Sidecars send judged shadow verdicts and savings-ledger deltas in their telemetry windows
(proxy/quality). Router verdicts with an ease score feed the `QualityCalibrator`; each
control round `decide` asks it for the cheapest tier pair and threshold whose lower bound
meets `quality.target`, which the control plane pushes as the policy's `router_threshold`
(the sidecars' router applies it). Nothing is pushed before the first verdict, so a fleet
without shadow evaluation keeps its configured threshold.

A quality drop is a drift signal: when the bound at the threshold in force falls below the
target (with at least the calibrator's `min_evidence` verdicts), a `quality_drop` alert is
raised for the cheap tier; it clears once the bound at the threshold in force recovers (the
calibrator's new, tighter threshold usually does that within a round or two).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from thrifty.config import Config, Tier, baseline_tier
from thrifty.controller.drift import Alert
from thrifty.controller.quality_calibration import CONSERVATIVE, QualityCalibrator, Verdict, _at_or_above
from thrifty.wire.quality import GROUPS, LedgerGroup, measured_savings, wilson
from thrifty.wire.stats import StatsWindow

QUALITY_DROP = "quality_drop"
_CALL = (1000, 200)  # input, output tokens: one scale to compare tiers' prices on
_NOMINAL_TOKENS_PER_S = 2000.0  # per replica, to put self-hosted prices on the same scale


def call_price(t: Tier) -> float:
    """Dollars of one reference-sized call on tier `t` (an ordering, not an invoice)."""
    p = t.price
    if p.self_hosted:
        return (p.gpu_hour or 0.0) * p.gpus_per_replica / 3600.0 / _NOMINAL_TOKENS_PER_S * sum(_CALL)
    return (_CALL[0] * (p.input_per_1m or 0.0) + _CALL[1] * (p.output_per_1m or 0.0)) / 1e6


class QualityControl:
    def __init__(self, config: Config, registry: CollectorRegistry) -> None:
        q = config.quality
        self.target, self.confidence = q.target, q.confidence
        self.reference = q.shadow.reference_tier or baseline_tier(config).name
        self.costs = {t.name: call_price(t) for t in config.tiers}
        self.calibrator = QualityCalibrator(target=q.target, confidence=q.confidence)
        self.pairs: dict[tuple[str, str, str], list[float]] = {}  # (kind, cheap, reference) -> [n, score sum]
        self.ledger = {g: LedgerGroup(g) for g in GROUPS}
        self.verdicts = 0
        self.per_cluster = q.cluster_thresholds
        self.last_clusters: dict[int, float] = {}
        self.clusters: set[tuple[tuple[str, str, str], int]] = set()  # (pair, cluster) seen in router verdicts
        self.chosen: tuple[str | None, float] | None = None  # the calibrator's last choice
        self.alerts: dict[str, Alert] = {}  # active quality_drop alerts by cheap tier
        self._ids = itertools.count(1)
        self.quality_gauge = Gauge("thrifty_controller_quality_retained", "judged quality of a cheaper tier's answers "
                                   "vs the reference, fleet-wide", ["kind", "cheap_tier", "reference_tier", "bound"],
                                   registry=registry)
        self.threshold_gauge = Gauge("thrifty_controller_router_threshold", "router threshold in force (pushed to "
                                     "the sidecars)", registry=registry)
        self.drop_gauge = Gauge("thrifty_controller_quality_drop", "1 while quality at the threshold in force is "
                                "below quality.target", ["cheap_tier"], registry=registry)
        self.ledger_gauge = Gauge("thrifty_controller_ledger_savings_ratio", "control-group savings, measured "
                                  "(with interval) and modelled", ["kind"], registry=registry)
        self.ledger_quality = Gauge("thrifty_controller_ledger_quality", "judged quality by ledger group (mean and "
                                    "two-sided Wilson interval)", ["group", "bound"], registry=registry)
        self.ledger_cost = Gauge("thrifty_controller_ledger_cost_per_request_dollars", "cost per request by "
                                 "ledger group (mean and interval)", ["group", "bound"], registry=registry)

    # -- intake ---------------------------------------------------------------
    def ingest(self, window: StatsWindow) -> None:
        for v in window.verdicts:
            self.verdicts += 1
            pair = self.pairs.setdefault((v.kind, v.cheap_tier, v.reference_tier), [0.0, 0.0])
            pair[0] += 1
            pair[1] += v.score
            if v.kind == "router" and 0 <= v.ease <= 1:
                self.clusters.add((("router", v.cheap_tier, v.reference_tier), v.cluster))
                self.calibrator.observe(Verdict(v.ease, v.cluster, v.cheap_tier, v.reference_tier, v.score))
        for g in window.ledger:
            if g.group in self.ledger:
                self.ledger[g.group].add(g)

    # -- the control round ----------------------------------------------------------
    def decide(self, now: float, in_force: float | None) -> tuple[float | None, dict[int, float], list[Alert]]:
        """(the pooled threshold to push, or None to leave the policy alone; per-cluster thresholds
        for the clusters with verdicts; alerts newly raised)."""
        if not self.calibrator.pairs():
            return None, {}, []
        cheap, threshold = self.calibrator.choose(self.costs, self.reference)
        self.chosen = (cheap, threshold)
        clusters: dict[int, float] = {}
        if cheap is not None and self.per_cluster:
            seen = {c for (kind, c_tier, ref), c in self.clusters if c_tier == cheap and ref == self.reference and c >= 0}
            clusters = {c: min(self.calibrator.threshold(cheap, self.reference, c), 1.0) for c in sorted(seen)}
        self.last_clusters = clusters
        raised = self._check_drop(now, in_force)
        self._gauges(min(threshold, 1.0))
        return min(threshold, 1.0), clusters, raised

    def _check_drop(self, now: float, in_force: float | None) -> list[Alert]:
        raised = []
        for cheap, ref in self.calibrator.pairs():
            if ref != self.reference:
                continue
            evidence = self.calibrator.evidence(cheap, ref)
            if in_force is None or evidence < self.calibrator.min_evidence:
                continue
            at = _at_or_above(self.calibrator.bounds(cheap, ref), in_force if in_force < 1.0 else CONSERVATIVE)
            low = at.share > 0 and at.lower < self.target
            self.drop_gauge.labels(cheap).set(1 if low else 0)
            active = self.alerts.get(cheap)
            if low and active is None:
                alert = Alert(id=next(self._ids), signal=QUALITY_DROP, tier=cheap, direction="down",
                              size=self.target - at.lower, start_time=now, detected_time=now,
                              evidence={"reference_tier": ref, "threshold": round(in_force, 4),
                                        "quality_retained": round(at.quality, 4), "lower_bound": round(at.lower, 4),
                                        "target": self.target, "verdicts": evidence})
                self.alerts[cheap] = alert
                raised.append(alert)
            elif not low and active is not None:
                active.active = False
                del self.alerts[cheap]
        return raised

    def _gauges(self, threshold: float) -> None:
        self.threshold_gauge.set(threshold)
        for (kind, cheap, ref), (n, total) in self.pairs.items():
            lo, hi = wilson(total, n, self.confidence)
            self.quality_gauge.labels(kind, cheap, ref, "mean").set(total / n if n else 0.0)
            self.quality_gauge.labels(kind, cheap, ref, "lower").set(lo)
        for k, v in measured_savings(self.ledger["control"], self.ledger["treated"], self.confidence).items():
            if v is not None:
                self.ledger_gauge.labels(k).set(v)
        for g, qual in self.group_quality().items():
            for bound, v in qual.items():
                if v is not None:
                    self.ledger_quality.labels(g, bound).set(v)
        for g, cost in self.cost_per_request().items():
            for bound, v in cost.items():
                if v is not None:
                    self.ledger_cost.labels(g, bound).set(v)

    # -- views ------------------------------------------------------------------------
    def cost_per_request(self) -> dict[str, dict[str, float | None]]:
        from thrifty.wire.quality import mean_interval

        out = {}
        for g, s in self.ledger.items():
            m = mean_interval(s.requests, s.dollars, s.dollars_sq, self.confidence)
            out[g] = {"mean": m[0], "lower": m[1], "upper": m[2]} if m else {"mean": None, "lower": None, "upper": None}
        return out

    def group_quality(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        two_sided = 1 - (1 - self.confidence) / 2  # wilson() is one-sided per end
        for g, s in self.ledger.items():
            if s.judged <= 0:
                out[g] = {"mean": None, "lower": None, "upper": None}
                continue
            lo, hi = wilson(s.quality_sum, s.judged, two_sided)
            out[g] = {"mean": s.quality_sum / s.judged, "lower": lo, "upper": hi}
        return out

    def to_json(self, threshold_in_force: float | None) -> dict[str, Any]:
        """`quality` in `GET /api/v1/fleet` (docs/contracts.md)."""
        snap = self.calibrator.snapshot()["pairs"]
        pairs = []
        for (kind, cheap, ref), (n, total) in sorted(self.pairs.items()):
            lo, _ = wilson(total, n, self.confidence)
            entry: dict[str, Any] = {"kind": kind, "cheap_tier": cheap, "reference_tier": ref, "verdicts": int(n),
                                     "quality": total / n if n else None, "lower_bound": lo}
            cal: Mapping[str, Any] | None = snap.get(f"{cheap}->{ref}") if kind == "router" else None
            if cal is not None:
                entry["calibrated"] = {k: cal[k] for k in ("threshold", "cheap_share", "quality_retained", "lower_bound")}
            pairs.append(entry)
        cost = self.cost_per_request()
        quality = self.group_quality()
        return {
            "target": self.target, "confidence": self.confidence, "reference_tier": self.reference,
            "threshold_in_force": threshold_in_force,
            "chosen_cheap_tier": self.chosen[0] if self.chosen else None,
            "cluster_thresholds": {str(c): t for c, t in sorted(self.last_clusters.items())},
            "verdicts": self.verdicts, "pairs": pairs,
            "alerts": [a.to_json() for a in self.alerts.values()],
            "ledger": {
                **{g: {"requests": s.requests, "cost_per_request": cost[g], "judged": s.judged, "quality": quality[g]}
                   for g, s in self.ledger.items()},
                "savings": measured_savings(self.ledger["control"], self.ledger["treated"], self.confidence),
            },
        }
