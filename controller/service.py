"""The control plane's core: fleet view + drift + autoscaler + actuation, on one tick.

Transport-free: the gRPC server feeds `ingest`, the HTTP API reads the `*_json` views
and calls the operator actions, and `tick(now)` runs one control round. Kubernetes
calls are blocking, so they run in a worker thread and never stall the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from thrifty.config import Config
from thrifty.controller.autoscaler import Autoscaler, Decision, TierObservation, TierPolicy
from thrifty.controller.drift import SPEC_NET_LOSS, Alert, DriftMonitor, bucket_signals
from thrifty.controller.fleet import FleetView
from thrifty.controller.intake import Rejected, check_window
from thrifty.controller.k8s import KubeActuator
from thrifty.controller.metrics import ControllerMetrics
from thrifty.controller.slo_budget import ttft_slo_s
from thrifty.wire.stats import StatsWindow
from thrifty.profiles import engine_costs, get_profile

log = logging.getLogger(__name__)
VIEW_SPAN_S = 60.0  # "now" in the fleet view and the autoscaler's arrival rate
DRIFT_BUCKET_S = 60.0
VIEW_HISTORY_S = 3600.0


def tier_policies(config: Config) -> list[TierPolicy]:
    """One policy per tier. Target concurrency is a quarter of max_num_seqs (room for the
    ITL SLO); the capacity prior, where the tier names a performance profile, is the
    profile's per-token cost at that batch, so it errs low until served tokens say more."""
    policies = []
    for t in config.tiers:
        concurrency = max(1.0, 0.25 * t.engine.max_num_seqs)
        profile = t.engine.prior_profile()
        costs = engine_costs(get_profile(profile), batch=int(concurrency)) if profile else {}
        policies.append(TierPolicy(
            name=t.name, min_replicas=t.replicas.min, max_replicas=t.replicas.max,
            scale_to_zero=t.replicas.scale_to_zero, target_concurrency=concurrency,
            slo_ttft_s=config.slo.ttft_p95_ms / 1000, slo_target=config.slo.ttft_attainment,
            slo_ttft_per_1k_prompt_s=config.slo.ttft_ms_per_1k_prompt_tokens / 1000, **costs,
        ))
    return policies


@dataclass(slots=True)
class DecisionRecord:
    decision: Decision
    dry_run: bool
    applied: bool

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {"time": d.time, "tier": d.tier, "from": d.from_replicas, "to": d.to_replicas,
                "reason": d.reason, "dry_run": self.dry_run, "applied": self.applied}


class ControlPlane:
    def __init__(self, config: Config, *, actuator: KubeActuator | None = None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 max_sidecars: int = 4096) -> None:
        self.config = config
        self.actuator = actuator
        self.clock = clock
        self.metrics = ControllerMetrics(registry or CollectorRegistry())
        names = [t.name for t in config.tiers]
        self.fleet = FleetView(names, bucket_s=10.0, history_s=VIEW_HISTORY_S)
        self.drift = DriftMonitor("cusum")
        self.autoscaler = Autoscaler(tier_policies(config), initial={t.name: t.replicas.count for t in config.tiers})
        self.decisions: deque[DecisionRecord] = deque(maxlen=500)
        self.sidecars: dict[str, int] = {}  # id -> open streams
        self.max_sidecars = max_sidecars
        self._tier_set = frozenset(names)
        self.ready: dict[str, int] = {}
        self.is_leader = actuator is None
        self._drift_until = 0.0
        self._budget_until: float | None = None  # end of the last bucket counted into the SLO budget
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.policy: dict[str, Any] = {
            "version": 1, "router_threshold": config.router.threshold,
            "cache_enabled": config.cache.exact.enabled or config.cache.semantic.enabled,
            "tier_targets": {t.name: t.replicas.count for t in config.tiers},
        }

    # -- telemetry ------------------------------------------------------------
    def connect(self, sidecar_id: str) -> asyncio.Queue[dict[str, Any]]:
        """A sidecar opened its stream: register it and return its policy queue.

        Streams are counted per id, so a second stream under a reused id (a restart
        racing its old stream's teardown) never makes the first one's disconnect drop
        the sidecar; raises `Rejected` past `max_sidecars` distinct ids (bounded state)."""
        if sidecar_id not in self.sidecars and len(self.sidecars) >= self.max_sidecars:
            self.metrics.telemetry_rejected.labels("too_many_sidecars").inc()
            raise Rejected("too_many_sidecars", f"more than {self.max_sidecars} sidecars connected")
        self.sidecars[sidecar_id] = self.sidecars.get(sidecar_id, 0) + 1
        self.metrics.sidecars.set(len(self.sidecars))
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        q.put_nowait(dict(self.policy))
        self._subscribers.add(q)
        return q

    def disconnect(self, sidecar_id: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)
        left = self.sidecars.get(sidecar_id, 0) - 1
        if left > 0:
            self.sidecars[sidecar_id] = left
        else:
            self.sidecars.pop(sidecar_id, None)
            self.fleet.forget_sidecar(sidecar_id)
        self.metrics.sidecars.set(len(self.sidecars))

    def receive(self, sidecar_id: str, window: StatsWindow) -> None:
        """A window from the network: checked (`controller/intake.py`), then ingested.

        Raises `Rejected` for a window to drop whole; entries for tiers this controller
        does not know are dropped and counted, the rest of the window is kept."""
        try:
            checked = check_window(window, self._tier_set, self.clock(),
                                   max_skew_s=self.config.controller.max_clock_skew_s, max_age_s=VIEW_HISTORY_S)
        except Rejected as exc:
            self.metrics.telemetry_rejected.labels(exc.reason).inc()
            raise
        if checked.unknown_tiers:
            self.metrics.telemetry_rejected.labels("unknown_tier").inc(len(checked.unknown_tiers))
        self.fleet.ingest(sidecar_id, checked.window)

    def ingest(self, sidecar_id: str, window: StatsWindow) -> None:
        """Trusted, in-process input (benches, tests): no checks. The network path is `receive`."""
        self.fleet.ingest(sidecar_id, window)

    def _push_policy(self, **changes: Any) -> None:
        if all(self.policy.get(k) == v for k, v in changes.items()):
            return
        self.policy.update(changes)
        self.policy["version"] += 1
        for q in self._subscribers:
            q.put_nowait(dict(self.policy))

    # -- operator actions -------------------------------------------------------
    def pause(self, paused: bool) -> None:
        self.autoscaler.paused = paused
        self.metrics.paused.set(1 if paused else 0)

    def pin(self, tier: str, lo: int | None, hi: int | None) -> None:
        self.autoscaler.pin(tier, lo, hi)

    def set_router_threshold(self, threshold: float) -> None:
        self._push_policy(router_threshold=threshold)

    # -- the control round ------------------------------------------------------
    def _ttft_outcomes(self, now: float) -> dict[str, tuple[int, int]]:
        """Per tier, (requests finished, of them over the TTFT SLO or failed) in the fleet
        view's buckets completed since the last round: the SLO budget's spend, each request once.
        With a length-aware SLO each bucket is held to it at the bucket's mean prompt length (the
        sidecars report TTFT histograms, not per-request pairs)."""
        base_s, per_1k_s = self.config.slo.ttft_p95_ms / 1000, self.config.slo.ttft_ms_per_1k_prompt_tokens / 1000
        start = now - VIEW_SPAN_S if self._budget_until is None else self._budget_until
        buckets = self.fleet.buckets_between(start, now)
        out = {}
        for t in self.config.tiers:
            parts = [b.tiers[t.name] for b in buckets if t.name in b.tiers]
            finished = sum(p.ttft.count + p.errors for p in parts)
            missed = sum(p.ttft.count_above(ttft_slo_s(base_s, per_1k_s, p.input_tokens / max(1, p.requests)))
                         + p.errors for p in parts)
            out[t.name] = (finished, round(missed))
        if buckets:
            self._budget_until = max(b.end for b in buckets)
        return out

    def observations(self, now: float) -> dict[str, TierObservation]:
        out = {}
        outcomes = self._ttft_outcomes(now)
        for t in self.config.tiers:
            s = self.fleet.summary(t.name, now, VIEW_SPAN_S)
            reps = [r for r, _ in self.fleet.replicas(t.name, now)]
            healthy = [r for r in reps if r.healthy]
            ready = self.ready.get(t.name, len(healthy))
            out[t.name] = TierObservation(
                time=now, ready=ready, starting=max(0, self.autoscaler.target(t.name) - ready),
                waiting=sum(r.waiting for r in healthy), running=sum(r.running for r in healthy),
                kv_usage=sum(r.kv_cache_usage for r in healthy), queue_depth=self.fleet.queue_depth(t.name),
                token_rate=s.tokens_per_s, ttft_p95_s=s.ttft_p95,
                ttft_finished=outcomes[t.name][0], ttft_missed=outcomes[t.name][1],
                mean_prompt_tokens=s.input_tokens / s.requests if s.requests else None,
            )
        return out

    async def tick(self, now: float | None = None) -> list[DecisionRecord]:
        now = self.clock() if now is None else now
        act = self.actuator
        if act is not None:
            self.is_leader = await asyncio.to_thread(act.lead)
            for t in self.config.tiers:
                try:
                    spec, ready = await asyncio.to_thread(act.replicas, t.name)
                except Exception as exc:  # noqa: BLE001 - a missing Deployment must not stop the loop
                    log.warning("cannot read Deployment for tier %s: %s", t.name, exc)
                    continue
                self.ready[t.name] = ready
                if not self.is_leader or not act.dry_run:  # follow what is in place (dry-run: keep virtual)
                    self.autoscaler.set_target(t.name, spec)
        self.metrics.leader.set(1 if self.is_leader else 0)
        records = []
        if self.is_leader:
            for d in self.autoscaler.decide(now, self.observations(now)):
                records.append(await self._apply(d))
        self._push_policy(tier_targets={t.name: self.autoscaler.target(t.name) for t in self.config.tiers})
        await self._drift_round(now)
        self._update_gauges(now)
        return records

    async def _apply(self, d: Decision) -> DecisionRecord:
        applied, dry = False, True
        if self.actuator is not None:
            try:
                res = await asyncio.to_thread(self.actuator.scale, d.tier, d.to_replicas, d.reason)
                applied, dry = res.applied, res.dry_run
            except Exception as exc:  # noqa: BLE001 - recorded, retried next round
                log.warning("scaling %s to %d failed: %s", d.tier, d.to_replicas, exc)
                d.reason += f" (failed: {exc.__class__.__name__})"
                self.autoscaler.set_target(d.tier, d.from_replicas)
        rec = DecisionRecord(d, dry_run=dry, applied=applied)
        self.decisions.append(rec)
        self.metrics.scale_actions.labels(d.tier, d.direction).inc()
        return rec

    async def _drift_round(self, now: float) -> None:
        bucket_end = math.floor(now / DRIFT_BUCKET_S) * DRIFT_BUCKET_S
        if self._drift_until == 0.0:
            self._drift_until = bucket_end
            return
        while self._drift_until < bucket_end:
            self._drift_until += DRIFT_BUCKET_S
            raised = self.drift.observe(self._drift_until, bucket_signals(self.fleet, self._drift_until, DRIFT_BUCKET_S))
            for t in self.config.tiers:
                spec = t.engine.speculative
                if spec is None:
                    continue
                draft_cost = 0.0 if spec.method in ("ngram", "mtp") else 0.1
                s = self.fleet.summary(t.name, self._drift_until, DRIFT_BUCKET_S)
                if s.spec_draft_tokens >= 200:
                    a = self.drift.check_speculative(self._drift_until, t.name, s.spec_acceptance,
                                                     spec.num_speculative_tokens, draft_cost)
                    if a is not None:
                        raised.append(a)
            for alert in raised:
                await self._announce(alert)

    async def _announce(self, alert: Alert) -> None:
        self.metrics.drift.raised[alert.signal] += 1
        log.warning("drift: %s %s %s by %.3f", alert.signal, alert.tier or "fleet", alert.direction, alert.size)
        if self.actuator is not None and self.is_leader:
            kind = "SpeculativeDecodingNetLoss" if alert.signal == SPEC_NET_LOSS else "DriftDetected"
            msg = (f"{alert.signal} ({alert.tier or 'fleet'}) moved {alert.direction} by {alert.size:+.3f} "
                   f"since {time.strftime('%H:%M:%S', time.gmtime(alert.start_time))}Z: {alert.evidence}")
            await asyncio.to_thread(self.actuator.event, alert.tier, kind, msg[:1024], True)

    def _update_gauges(self, now: float) -> None:
        whole = self.fleet.summary(None, now, VIEW_SPAN_S)
        if whole.savings_ratio is not None:
            self.metrics.savings.set(whole.savings_ratio)
        for t in self.config.tiers:
            s = self.fleet.summary(t.name, now, VIEW_SPAN_S)
            self.metrics.desired.labels(t.name).set(self.autoscaler.target(t.name))
            budget = self.autoscaler.budget(t.name)
            self.metrics.capacity_factor.labels(t.name).set(budget.factor)
            burn = budget.burn_rate(now, budget.window_s, min_requests=1)
            if burn is not None:
                self.metrics.burn_rate.labels(t.name).set(burn)
            if t.name in self.ready:
                self.metrics.ready.labels(t.name).set(self.ready[t.name])
            if s.cost_per_request is not None:
                self.metrics.cost_per_1k.labels(t.name).set(s.cost_per_request * 1000)
            if s.ttft_p95 is not None:
                self.metrics.ttft_p95.labels(t.name).set(s.ttft_p95)
        active: dict[str, int] = {}
        for a in self.drift.active():
            active[a.signal] = active.get(a.signal, 0) + 1
        self.metrics.drift.active = {k: active.get(k, 0) for k in set(active) | set(self.metrics.drift.active)}

    # -- views for the API --------------------------------------------------------
    def fleet_json(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        whole = self.fleet.summary(None, now, VIEW_SPAN_S)
        hours = VIEW_SPAN_S / 3600
        shares = self.fleet.routing_share(now, VIEW_SPAN_S)
        tiers = [self.tier_json(t.name, now, shares.get(t.name)) for t in self.config.tiers]
        cost_1k = whole.cost_per_request
        return {
            "time": now,
            "autoscaling_paused": self.autoscaler.paused,
            "router_threshold": self.policy["router_threshold"],
            "fleet": {
                "dollars_per_hour": whole.dollars / hours,
                "baseline_dollars_per_hour": whole.baseline_dollars / hours,
                "savings_ratio": whole.savings_ratio,
                "cost_per_1k_requests": None if cost_1k is None else cost_1k * 1000,
                "requests_per_s": whole.requests_per_s,
                "error_rate": whole.error_rate,
                "cache_hit_rate": {"exact": whole.exact_hit_rate, "semantic": whole.semantic_hit_rate},
                "savings_history": self.fleet.savings_history(now),
                "shared_cache": self.shared_cache_json(now),
            },
            "tiers": tiers,
            "sidecars": len(self.sidecars),
        }

    def shared_cache_json(self, now: float) -> dict[str, Any] | None:
        """`fleet.shared_cache` (docs/contracts.md): None when no sidecar reports a shared tier."""
        s = self.fleet.shared_summary(now, VIEW_SPAN_S)
        if s is None:
            return None
        ms = lambda v: None if v is None else v * 1000  # noqa: E731
        return {
            "pods": s.pods, "pods_up": s.pods_up, "hit_rate": s.hit_rate,
            "exact_hits": s.totals.exact_hits, "semantic_hits": s.totals.semantic_hits,
            "mirror_lag_p99_ms": ms(s.mirror_lag_p99), "mirror_lag_mean_ms": ms(s.mirror_lag_mean),
            "sync_errors": s.totals.sync_errors,
        }

    def tier_json(self, name: str, now: float | None = None, share: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        t = self.config.tier(name)
        s = self.fleet.summary(name, now, VIEW_SPAN_S)
        reps = self.fleet.replicas(name, now)
        lo, hi = self.autoscaler.bounds(name)
        budget = self.autoscaler.budget(name)
        healthy = [r for r, _ in reps if r.healthy]
        ms = lambda v: None if v is None else v * 1000  # noqa: E731
        return {
            "name": name,
            "replicas_desired": self.autoscaler.target(name),
            "replicas_ready": self.ready.get(name, len(healthy)),
            "min": lo, "max": hi, "pinned": self.autoscaler.pinned(name),
            "slo_burn_rate": budget.burn_rate(now, budget.window_s, min_requests=1), "capacity_factor": budget.factor,
            "routing_share": share if share is not None else self.fleet.routing_share(now, VIEW_SPAN_S).get(name),
            "ttft_p95_ms": ms(s.ttft_p95), "itl_p95_ms": ms(s.itl_p95),
            "slo_ttft_p95_ms": self.config.slo.ttft_p95_ms, "slo_itl_p95_ms": self.config.slo.itl_p95_ms,
            "queue": self.fleet.queue_depth(name) + sum(r.waiting for r in healthy),
            "kv_cache_usage": (sum(r.kv_cache_usage for r in healthy) / len(healthy)) if healthy else 0.0,
            "spec_acceptance": s.spec_acceptance if t.engine.speculative is not None or s.spec_draft_tokens else None,
            "dollars_per_hour": s.dollars / (VIEW_SPAN_S / 3600),
            # What the tier's running replicas cost per hour, traffic or not (None for API-priced tiers).
            "replica_dollars_per_hour": (t.price.gpu_hour * t.price.gpus_per_replica * self.ready.get(name, len(healthy))
                                         if t.price.gpu_hour is not None else None),
            "replicas": [
                {"url": r.url, "healthy": r.healthy, "waiting": r.waiting, "running": r.running,
                 "kv_cache_usage": r.kv_cache_usage, "ttft_p95_ms": None}
                for r, _ in reps
            ],
        }

    def alerts_json(self) -> dict[str, Any]:
        return {"alerts": [a.to_json() for a in reversed(self.drift.alerts[-200:])]}

    def decisions_json(self) -> dict[str, Any]:
        return {"decisions": [r.to_json() for r in reversed(self.decisions)]}

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Tick every `interval_s` until `stop` is set; a failing round is logged, not fatal."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - keep controlling; the next round retries
                log.exception("control round failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
