"""The fleet view: what every sidecar reported, summed per tier and fleet-wide over time.

Windows from all sidecars land in fixed time buckets (by their end time), so the view
can answer "the last minute" for the TUI and hand the drift detector one finished
bucket at a time. Counters are summed across sidecars; replica gauges keep the latest
report per replica; queue depths keep the latest per sidecar and are summed. The shared
(Redis) cache tier's counters are summed per bucket and its `up` gauge kept per sidecar.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from thrifty.wire.stats import Histogram, ReplicaStats, SharedCacheStats, StatsWindow, TierStats, ratio


@dataclass(slots=True)
class Bucket:
    start: float
    width: float
    tiers: dict[str, TierStats] = field(default_factory=dict)
    shared: SharedCacheStats | None = None  # summed over the sidecars that have a shared tier

    @property
    def end(self) -> float:
        return self.start + self.width

    def tier(self, name: str) -> TierStats:
        if name not in self.tiers:
            self.tiers[name] = TierStats(tier=name)
        return self.tiers[name]


@dataclass(slots=True)
class TierSummary:
    """Derived figures for one tier (or the whole fleet, tier == "") over a span."""

    tier: str
    span_s: float
    requests: int
    errors: int
    client_errors: int
    dollars: float
    baseline_dollars: float
    cache_baseline_dollars: float
    routed: int
    cache_exact_hits: int
    cache_semantic_hits: int
    output_tokens: int
    input_tokens: int
    ttft: Histogram
    itl: Histogram
    spec_draft_tokens: float
    spec_accepted_tokens: float

    @property
    def cost_per_request(self) -> float | None:
        return ratio(self.dollars, self.requests)

    @property
    def savings_ratio(self) -> float | None:
        r = ratio(self.dollars, self.baseline_dollars)
        return None if r is None else 1.0 - r

    @property
    def error_rate(self) -> float | None:
        return ratio(self.errors, self.requests)

    @property
    def answerable(self) -> int:
        """Requests an engine or a cache could answer: a client error (a prompt over the
        context, a bad request) can be neither a hit nor a miss, and its share moves."""
        return self.requests - self.client_errors

    @property
    def exact_hit_rate(self) -> float | None:
        return ratio(self.cache_exact_hits, self.answerable)

    @property
    def semantic_hit_rate(self) -> float | None:
        return ratio(self.cache_semantic_hits, self.answerable)

    @property
    def ttft_p95(self) -> float | None:
        return self.ttft.quantile(0.95)

    @property
    def itl_p95(self) -> float | None:
        return self.itl.quantile(0.95)

    @property
    def spec_acceptance(self) -> float | None:
        return ratio(self.spec_accepted_tokens, self.spec_draft_tokens)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.span_s if self.span_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.span_s if self.span_s > 0 else 0.0


@dataclass(slots=True)
class SharedSummary:
    """The shared cache tier across the fleet over a span: `pods` report one, `pods_up` use it now."""

    span_s: float
    pods: int
    pods_up: int
    requests: int  # all requests the fleet answered in the span (the hit rate's denominator)
    totals: SharedCacheStats

    @property
    def hit_rate(self) -> float | None:
        return ratio(self.totals.hits, self.requests)

    @property
    def mirror_lag_p99(self) -> float | None:
        return self.totals.mirror_lag.quantile(0.99)

    @property
    def mirror_lag_mean(self) -> float | None:
        return ratio(self.totals.mirror_lag.sum, self.totals.mirror_lag.count)


def summarize(tier: str, parts: list[TierStats], span_s: float) -> TierSummary:
    total = TierStats(tier=tier)
    draft = accepted = 0.0
    for p in parts:
        total.add(p)
        draft += p.spec_draft_tokens
        accepted += p.spec_accepted_tokens
    return TierSummary(
        tier=tier, span_s=span_s, requests=total.requests, errors=total.errors, client_errors=total.client_errors,
        dollars=total.dollars, baseline_dollars=total.baseline_dollars,
        cache_baseline_dollars=total.cache_baseline_dollars, routed=total.routed,
        cache_exact_hits=total.cache_exact_hits, cache_semantic_hits=total.cache_semantic_hits,
        output_tokens=total.output_tokens, input_tokens=total.input_tokens,
        ttft=total.ttft, itl=total.itl, spec_draft_tokens=draft, spec_accepted_tokens=accepted,
    )


@dataclass(slots=True)
class _Gauge:
    value: ReplicaStats
    time: float


class FleetView:
    """Aggregates sidecar windows; keeps `history_s` of buckets `bucket_s` wide."""

    def __init__(self, tiers: list[str], *, bucket_s: float = 10.0, history_s: float = 3600.0,
                 replica_stale_s: float = 600.0, max_replicas: int = 4096) -> None:
        self.tier_names = list(tiers)  # fixed: entries for other tiers are ignored (bounded state)
        self._known = frozenset(tiers)
        self.bucket_s = bucket_s
        self.replica_stale_s, self.max_replicas = replica_stale_s, max_replicas
        self._buckets: deque[Bucket] = deque(maxlen=max(2, int(math.ceil(history_s / bucket_s))))
        self._replicas: dict[tuple[str, str], _Gauge] = {}
        self._queues: dict[tuple[str, str], float] = {}  # (sidecar, tier) -> depth
        self._inflight: dict[tuple[str, str], dict[str, float]] = {}  # (sidecar, tier) -> url -> in flight
        self._shared_up: dict[str, tuple[bool, float]] = {}  # sidecar -> (shared tier up, window end)
        self.last_time = 0.0

    # -- ingest -------------------------------------------------------------
    def ingest(self, sidecar_id: str, window: StatsWindow) -> None:
        bucket = self._bucket_for(window.window_end)
        for ts in window.tiers:
            if ts.tier not in self._known:
                continue
            if bucket is not None:
                part = bucket.tier(ts.tier)
                part.add(ts)
                # Engine counters (spec decode, served tokens) ride on replica rows; keep them per bucket.
                for r in ts.replicas:
                    if r.spec_draft_tokens or r.spec_accepted_tokens or r.prompt_tokens is not None \
                            or r.generation_tokens is not None:
                        part.replicas.append(ReplicaStats(url=r.url, spec_draft_tokens=r.spec_draft_tokens,
                                                          spec_accepted_tokens=r.spec_accepted_tokens,
                                                          prompt_tokens=r.prompt_tokens,
                                                          generation_tokens=r.generation_tokens))
            self._queues[(sidecar_id, ts.tier)] = ts.queue_depth
            # The sidecar's latest report replaces its earlier one: URLs it stopped reporting go.
            self._inflight[(sidecar_id, ts.tier)] = {r.url: r.inflight for r in ts.replicas}
            for r in ts.replicas:
                self._replicas[(ts.tier, r.url)] = _Gauge(r, window.window_end)
        if window.shared_cache is not None:
            if bucket is not None:
                if bucket.shared is None:
                    bucket.shared = SharedCacheStats()
                bucket.shared.add(window.shared_cache)
            self._shared_up[sidecar_id] = (window.shared_cache.up, window.window_end)
        self.last_time = max(self.last_time, window.window_end)
        if len(self._replicas) > self.max_replicas:
            self._prune_replicas()

    def _prune_replicas(self) -> None:
        """Drop stale replica gauges, then the oldest, down to `max_replicas`."""
        horizon = self.last_time - self.replica_stale_s
        kept = sorted(((k, g) for k, g in self._replicas.items() if g.time >= horizon), key=lambda kv: kv[1].time)
        self._replicas = dict(kept[-self.max_replicas:])

    def forget_sidecar(self, sidecar_id: str) -> None:
        """A sidecar that went away no longer contributes queue/in-flight gauges."""
        for key in [k for k in self._queues if k[0] == sidecar_id]:
            del self._queues[key]
        for key in [k for k in self._inflight if k[0] == sidecar_id]:
            del self._inflight[key]
        self._shared_up.pop(sidecar_id, None)

    def _bucket_for(self, t: float) -> Bucket | None:
        start = math.floor(t / self.bucket_s) * self.bucket_s
        if self._buckets and start < self._buckets[0].start:
            return None  # older than the history we keep
        for b in reversed(self._buckets):
            if b.start == start:
                return b
            if b.start < start:
                break
        new = Bucket(start=start, width=self.bucket_s)
        items = list(self._buckets)
        items.append(new)
        items.sort(key=lambda b: b.start)
        self._buckets.clear()
        self._buckets.extend(items)
        return new

    # -- queries ------------------------------------------------------------
    def buckets_between(self, start: float, end: float) -> list[Bucket]:
        return [b for b in self._buckets if b.start >= start and b.end <= end + 1e-9]

    def summary(self, tier: str | None, now: float, span_s: float) -> TierSummary:
        """Tier (or fleet when None) figures over the buckets that ended in (now-span, now]."""
        buckets = [b for b in self._buckets if now - span_s - 1e-9 <= b.start and b.start < now]
        names = [tier] if tier is not None else self.tier_names
        parts = [b.tiers[n] for b in buckets for n in names if n in b.tiers]
        return summarize(tier or "", parts, span_s)

    def shared_summary(self, now: float, span_s: float, stale_s: float = 60.0) -> SharedSummary | None:
        """The shared tier over the span, or None when no sidecar reported one in it (or lately)."""
        buckets = [b for b in self._buckets if now - span_s - 1e-9 <= b.start and b.start < now]
        pods = [up for up, t in self._shared_up.values() if now - t <= stale_s]
        parts = [b.shared for b in buckets if b.shared is not None]
        if not pods and not parts:
            return None
        totals = SharedCacheStats()
        for p in parts:
            totals.add(p)
        requests = sum(t.requests for b in buckets for n, t in b.tiers.items() if n in self._known)
        return SharedSummary(span_s=span_s, pods=len(pods), pods_up=sum(pods), requests=requests, totals=totals)

    def routing_share(self, now: float, span_s: float) -> dict[str, float | None]:
        sums = {n: self.summary(n, now, span_s) for n in self.tier_names}
        routed = sum(s.routed for s in sums.values())
        if routed == 0:  # no router decisions: the share of requests answered
            routed_by = {n: s.requests for n, s in sums.items()}
        else:
            routed_by = {n: s.routed for n, s in sums.items()}
        total = sum(routed_by.values())
        return {n: ratio(v, total) for n, v in routed_by.items()}

    def replicas(self, tier: str, now: float, stale_s: float = 60.0) -> list[tuple[ReplicaStats, float]]:
        """Latest gauges per replica of `tier` (with summed in-flight), dropping stale ones."""
        out = []
        for (t, url), g in sorted(self._replicas.items()):
            if t != tier or now - g.time > stale_s:
                continue
            inflight = sum(urls.get(url, 0.0) for (s, tt), urls in self._inflight.items() if tt == tier)
            out.append((g.value, inflight))
        return out

    def queue_depth(self, tier: str) -> float:
        return sum(v for (s, t), v in self._queues.items() if t == tier)

    def savings_history(self, now: float, points: int = 60) -> list[float]:
        out = []
        for b in list(self._buckets)[-points:]:
            if b.start >= now:
                continue
            s = summarize("", list(b.tiers.values()), b.width).savings_ratio
            if s is not None:
                out.append(round(s, 4))
        return out
