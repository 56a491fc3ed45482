"""Plain-data telemetry windows, shared by the gRPC codec, the fleet view and the benches.

The controller's logic works on these dataclasses, not on protobuf messages, so the
benchmarks can feed simulated windows straight in and the policy code stays pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thrifty.wire.quality import LedgerGroup, ShadowVerdict

# Upper bucket edges (seconds) used when a window carries no histogram of its own.
DEFAULT_LATENCY_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)


@dataclass(slots=True)
class Histogram:
    """Bucket-count deltas; `counts` has one more entry than `bounds` (the +Inf bucket)."""

    bounds: tuple[float, ...] = DEFAULT_LATENCY_BOUNDS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("histogram needs len(bounds) + 1 counts")

    def observe(self, value: float, n: int = 1) -> None:
        lo, hi = 0, len(self.bounds)
        while lo < hi:  # first bound >= value
            mid = (lo + hi) // 2
            if self.bounds[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += n
        self.sum += value * n
        self.count += n

    def merge(self, other: "Histogram") -> None:
        if other.count == 0:
            return
        if other.bounds != self.bounds:
            if self.count == 0:
                self.bounds, self.counts = other.bounds, [0] * (len(other.bounds) + 1)
            else:  # different layouts: re-bin by each bucket's upper edge
                for i, c in enumerate(other.counts):
                    if c:
                        edge = other.bounds[i] if i < len(other.bounds) else other.bounds[-1] * 2
                        self.observe(edge, c)
                        self.sum -= edge * c
                self.sum += other.sum
                return
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum += other.sum
        self.count += other.count

    def count_above(self, x: float) -> float:
        """Observations above `x`, linear inside the bucket that holds it (as `quantile` reads
        buckets); everything in the +Inf bucket counts as above."""
        above, lower = 0.0, 0.0
        for i, c in enumerate(self.counts):
            if i == len(self.bounds):
                above += c
                break
            upper = self.bounds[i]
            if lower >= x:
                above += c
            elif upper > x:
                above += c * (upper - x) / (upper - lower)
            lower = upper
        return above

    def quantile(self, q: float) -> float | None:
        """Prometheus-style `histogram_quantile`: linear inside the bucket; None when empty."""
        total = sum(self.counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, c in enumerate(self.counts):
            if seen + c >= rank and c > 0:
                if i == len(self.bounds):  # +Inf bucket: the best we can say is the last edge
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i > 0 else 0.0
                return lower + (self.bounds[i] - lower) * ((rank - seen) / c)
            seen += c
        return self.bounds[-1]


@dataclass(slots=True)
class ReplicaStats:
    url: str
    healthy: bool = True
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    inflight: float = 0.0
    spec_draft_tokens: float = 0.0
    spec_accepted_tokens: float = 0.0
    prompt_tokens: float | None = None  # engine-processed token deltas; None: not scraped
    generation_tokens: float | None = None


@dataclass(slots=True)
class TierStats:
    """One tier's deltas over a window (gauges: the value at the window's end)."""

    tier: str
    requests: int = 0
    errors: int = 0
    # Finished with outcome client_error (a prompt over the context, a bad request): neither an
    # engine nor a cache could answer them, so the hit rates leave them out of the denominator.
    client_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    dollars: float = 0.0
    baseline_dollars: float = 0.0
    # The part of baseline_dollars that cache hits carried (hits cost nothing): the cost index
    # prices only what the engines served, so the hit share does not read as a price change.
    cache_baseline_dollars: float = 0.0
    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)
    queue_depth: float = 0.0
    cache_exact_hits: int = 0
    cache_semantic_hits: int = 0
    routed: int = 0
    replicas: list[ReplicaStats] = field(default_factory=list)

    def add(self, other: "TierStats") -> None:
        """Sum counters and histograms; gauges (queue, replicas) are handled by the caller."""
        self.requests += other.requests
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.dollars += other.dollars
        self.baseline_dollars += other.baseline_dollars
        self.cache_baseline_dollars += other.cache_baseline_dollars
        self.ttft.merge(other.ttft)
        self.itl.merge(other.itl)
        self.cache_exact_hits += other.cache_exact_hits
        self.cache_semantic_hits += other.cache_semantic_hits
        self.routed += other.routed

    @property
    def spec_draft_tokens(self) -> float:
        return sum(r.spec_draft_tokens for r in self.replicas)

    @property
    def spec_accepted_tokens(self) -> float:
        return sum(r.spec_accepted_tokens for r in self.replicas)

    @property
    def served_tokens(self) -> float | None:
        """Prompt + generated tokens the engines processed; None when no replica reported them."""
        rows = [r for r in self.replicas if r.prompt_tokens is not None or r.generation_tokens is not None]
        if not rows:
            return None
        return sum((r.prompt_tokens or 0.0) + (r.generation_tokens or 0.0) for r in rows)


@dataclass(slots=True)
class SharedCacheStats:
    """One sidecar's shared (Redis) cache tier over a window: counter deltas, `up` at the end.

    A window without a shared tier carries None instead, so "no tier" and "tier down" differ."""

    up: bool = False
    exact_hits: int = 0
    semantic_hits: int = 0
    sync_errors: int = 0
    mirror_lag: Histogram = field(default_factory=Histogram)

    @property
    def hits(self) -> int:
        return self.exact_hits + self.semantic_hits

    def add(self, other: "SharedCacheStats") -> None:
        """Sum counters and the lag histogram; `up` is a gauge the caller keeps per sidecar."""
        self.exact_hits += other.exact_hits
        self.semantic_hits += other.semantic_hits
        self.sync_errors += other.sync_errors
        self.mirror_lag.merge(other.mirror_lag)


@dataclass(slots=True)
class StatsWindow:
    window_start: float
    window_end: float
    tiers: list[TierStats] = field(default_factory=list)
    seq: int = 0
    catch_up: bool = False
    shared_cache: SharedCacheStats | None = None
    verdicts: list[ShadowVerdict] = field(default_factory=list)  # judged since the last window
    ledger: list[LedgerGroup] = field(default_factory=list)  # savings-ledger deltas per group


def ratio(num: float, den: float) -> float | None:
    """num/den, or None when there is nothing to divide by (never NaN)."""
    if den <= 0 or math.isnan(den):
        return None
    return num / den
