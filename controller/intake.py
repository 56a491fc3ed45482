"""Checks on everything a sidecar sends before it reaches the fleet view.

The telemetry port is reachable from the network, so a window is data to verify, not
to trust: tiers must be the controller's own (a flood of invented names must not grow
memory or slow the fleet view), timestamps must sit near the controller's clock (one
window dated months ahead would otherwise own the bucket history), and every number
must be finite and within a range a real sidecar can produce in one window.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from thrifty.wire.quality import GROUPS, VERDICT_KINDS, LedgerGroup, ShadowVerdict
from thrifty.wire.stats import Histogram, ReplicaStats, SharedCacheStats, StatsWindow, TierStats

MAX_SIDECAR_ID = 128
SIDECAR_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
MAX_URL = 256
MAX_REPLICAS_PER_TIER = 256
MAX_BUCKETS = 64
MAX_COUNT = 10**9  # requests, hits, histogram counts per window
MAX_TOKENS = 10**12
MAX_DOLLARS = 1e9
MAX_GAUGE = 1e7  # queue depth, waiting, running, in-flight
MAX_VERDICTS = 1000  # per window (the sidecar holds at most quality.shadow.max_verdicts)
MAX_CLUSTER = 100_000


class Rejected(ValueError):
    """A message the controller refuses; `reason` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_sidecar_id(sidecar_id: str) -> str:
    if not SIDECAR_ID_RE.match(sidecar_id):
        raise Rejected("bad_hello", f"sidecar_id must match {SIDECAR_ID_RE.pattern} (at most {MAX_SIDECAR_ID} characters)")
    return sidecar_id


def _number(value: float, name: str, hi: float, lo: float = 0.0) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise Rejected("bad_window", f"{name} must be a finite number in [{lo:g}, {hi:g}]")
    return value


def _histogram(h: Histogram, name: str) -> None:
    if not h.bounds:
        return
    if len(h.bounds) > MAX_BUCKETS:
        raise Rejected("bad_window", f"{name} has more than {MAX_BUCKETS} buckets")
    prev = -math.inf
    for b in h.bounds:
        if not math.isfinite(b) or b <= prev:
            raise Rejected("bad_window", f"{name} bounds must be finite and increasing")
        prev = b
    for c in h.counts:
        _number(c, f"{name} bucket count", MAX_COUNT)
    if h.count != sum(h.counts):
        raise Rejected("bad_window", f"{name} count is not the sum of its buckets")
    _number(h.sum, f"{name} sum", MAX_TOKENS)


def _replica(r: ReplicaStats, tier: str) -> None:
    if not r.url or len(r.url) > MAX_URL or not r.url.isprintable():
        raise Rejected("bad_window", f"tier {tier}: replica url must be 1-{MAX_URL} printable characters")
    for name in ("waiting", "running", "inflight"):
        _number(getattr(r, name), f"replica {name}", MAX_GAUGE)
    _number(r.kv_cache_usage, "replica kv_cache_usage", 1.0)
    _number(r.spec_draft_tokens, "replica spec_draft_tokens", MAX_TOKENS)
    _number(r.spec_accepted_tokens, "replica spec_accepted_tokens", MAX_TOKENS)
    for name in ("prompt_tokens", "generation_tokens"):
        if getattr(r, name) is not None:
            _number(getattr(r, name), f"replica {name}", MAX_TOKENS)


def _tier(t: TierStats) -> None:
    for name in ("requests", "errors", "client_errors", "cache_exact_hits", "cache_semantic_hits", "routed"):
        _number(getattr(t, name), name, MAX_COUNT)
    for name in ("input_tokens", "output_tokens", "cached_tokens"):
        _number(getattr(t, name), name, MAX_TOKENS)
    _number(t.dollars, "dollars", MAX_DOLLARS)
    _number(t.baseline_dollars, "baseline_dollars", MAX_DOLLARS)
    _number(t.cache_baseline_dollars, "cache_baseline_dollars", MAX_DOLLARS)
    _number(t.queue_depth, "queue_depth", MAX_GAUGE)
    _histogram(t.ttft, "ttft")
    _histogram(t.itl, "itl")
    if len(t.replicas) > MAX_REPLICAS_PER_TIER:
        raise Rejected("bad_window", f"tier {t.tier}: more than {MAX_REPLICAS_PER_TIER} replicas")
    for r in t.replicas:
        _replica(r, t.tier)


def _shared(s: SharedCacheStats) -> None:
    for name in ("exact_hits", "semantic_hits", "sync_errors"):
        _number(getattr(s, name), f"shared_cache {name}", MAX_COUNT)
    _histogram(s.mirror_lag, "shared_cache mirror_lag")


def _verdict(v: ShadowVerdict, tiers: frozenset[str]) -> None:
    if v.kind not in VERDICT_KINDS:
        raise Rejected("bad_window", f"verdict kind must be one of {', '.join(VERDICT_KINDS)}")
    if v.cheap_tier not in tiers or v.reference_tier not in tiers:
        raise Rejected("bad_window", "verdict cheap_tier and reference_tier must be tiers of this fleet")
    _number(v.cluster, "verdict cluster", MAX_CLUSTER, -1)
    _number(v.ease, "verdict ease", 1.0, -1)
    _number(v.score, "verdict score", 1.0)


def _ledger(g: LedgerGroup) -> None:
    if g.group not in GROUPS:
        raise Rejected("bad_window", f"ledger group must be one of {', '.join(GROUPS)}")
    _number(g.requests, "ledger requests", MAX_COUNT)
    _number(g.judged, "ledger judged", MAX_COUNT)
    _number(g.quality_sum, "ledger quality_sum", g.judged)
    for name in ("dollars", "baseline_dollars"):
        _number(getattr(g, name), f"ledger {name}", MAX_DOLLARS)
    _number(g.dollars_sq, "ledger dollars_sq", MAX_DOLLARS * MAX_DOLLARS)


@dataclass(slots=True)
class Checked:
    window: StatsWindow
    unknown_tiers: list[str] = field(default_factory=list)  # dropped entries (names, for a counted log line)


def check_window(window: StatsWindow, tiers: frozenset[str], now: float, *, max_skew_s: float,
                 max_age_s: float) -> Checked:
    """The window with only known tiers, or `Rejected` naming the first bad field.

    `window_end` must lie in [now - max_age_s, now + max_skew_s]; `window_start` may be
    far earlier (a catch-up window covers an outage) but not after the end."""
    end = window.window_end
    if not math.isfinite(end) or not now - max_age_s <= end <= now + max_skew_s:
        raise Rejected("clock_skew", f"window_end must be within {max_skew_s:g} s ahead of and {max_age_s:g} s "
                                     "behind the controller's clock")
    _number(window.window_start, "window_start", window.window_end)
    kept: list[TierStats] = []
    unknown: list[str] = []
    for t in window.tiers:
        if t.tier not in tiers:
            unknown.append(t.tier)
            continue
        _tier(t)
        kept.append(t)
    if window.shared_cache is not None:
        _shared(window.shared_cache)
    if len(window.verdicts) > MAX_VERDICTS:
        raise Rejected("bad_window", f"more than {MAX_VERDICTS} verdicts in one window")
    for v in window.verdicts:
        _verdict(v, tiers)
    if len(window.ledger) > len(GROUPS) or len({g.group for g in window.ledger}) != len(window.ledger):
        raise Rejected("bad_window", "ledger carries each group at most once")
    for g in window.ledger:
        _ledger(g)
    window.tiers = kept
    return Checked(window, unknown)
