"""Sustained-change detection on the fleet's signals, one bucket (default 60 s) at a time.

Contract: `DriftMonitor.observe(t, values)` takes one bucket's value per (signal, tier)
(from `bucket_signals(fleet, end, span_s)`) and returns the `Alert`s raised now, each with
its size, estimated start time and evidence; `active()` lists those still in force, and
`check_speculative` raises `spec_net_loss` when speculative decoding stays below break-even.
Each series is standardised against a lagged robust baseline and fed to a sequential test
(`drift_detectors`: CUSUM by default, its threshold derived from a false-alarm budget).
Why: alerts must mean a sustained change worth acting on, not a noisy bucket. The
signals' choice and the measurements behind every constant are in docs/design/drift.md.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field

from thrifty.controller.drift_detectors import METHODS  # noqa: F401  (re-exported: the bench's --method choices)
from thrifty.controller.drift_detectors import (
    Z_CLIP,
    Method,
    RollingBaseline,
    SequentialTest,
    SignalSpec,
    make_test,
    threshold_for,
)
from thrifty.controller.fleet import FleetView, TierSummary

# Per-bucket context, not tested: the load (tokens) and size (requests) of each tier and of
# the fleet (tier None), which the baselines regress on and weight by (`RollingBaseline`).
CONTEXT = ("requests", "input_tokens", "output_tokens")
# Signals read against the whole fleet's load although they are per tier: a tier's share
# moves its own load, so regressing the share on it would explain the shift away.
FLEET_SCOPED = {"routing_share"}

SIGNALS: dict[str, SignalSpec] = {
    s.name: s
    for s in (
        SignalSpec("cost_per_request", 0.05, 1e-9, 0.08),
        SignalSpec("savings_ratio", 0.0, 0.02, 0.05, relative=False),
        SignalSpec("cost_index", 0.02, 1e-6, 0.08, mix_driven=True),
        SignalSpec("ttft_p95", 0.08, 0.005, 0.15, load_driven=True),
        SignalSpec("ttft_per_1k_prompt", 0.06, 1e-4, 0.15, load_driven=True),
        SignalSpec("itl_mean", 0.08, 0.001, 0.15, load_driven=True),
        SignalSpec("error_rate", 0.0, 0.01, 0.02, relative=False),
        # Hit rates: relative (a third of the rate lost matters whatever the rate), floored at
        # their binomial noise (docs/design/drift.md, "Hit rates").
        SignalSpec("cache_hit_rate_exact", 0.0, 1e-3, 1 / 3, binomial=True),
        SignalSpec("cache_hit_rate_semantic", 0.0, 1e-3, 1 / 3, binomial=True),
        SignalSpec("routing_share", 0.0, 0.025, 0.06, relative=False),
        SignalSpec("spec_acceptance", 0.0, 0.03, 0.08, relative=False),
    )
}
SPEC_NET_LOSS = "spec_net_loss"


def load_features(tokens_k: tuple[float, ...]) -> tuple[float, ...]:
    """A latency series' regressors: the bucket's (input, output) thousands of tokens and the input's square.

    Why: latency is convex in load (batch size, KV pressure and queueing grow faster than
    the tokens near saturation: on Azure rate4x the small tier's ITL was 0.019 s at ~800k
    prompt tokens a minute, 0.025-0.031 s at 1300-1450k, 0.040-0.052 s at 1570-1800k), so
    one slope over-predicts the middle and under-predicts the top. The square is divided
    by 1000 only to keep the normal equations' scales comparable (OLS is scale-free).
    """
    return (*tokens_k, tokens_k[0] * tokens_k[0] / 1000.0)


def mix_features(tokens_k: tuple[float, ...]) -> tuple[float, ...]:
    """A price index's regressor: the bucket's output share of its (input, output) tokens.

    Why: a tier's cost per baseline dollar is its input and output price ratios mixed by
    that share, whatever the load's level; () for a bucket with no tokens (nothing to fit).
    """
    total = tokens_k[0] + tokens_k[1]
    return (tokens_k[1] / total,) if total > 0 else ()


@dataclass(slots=True)
class Alert:
    id: int
    signal: str
    tier: str | None
    direction: str  # "up" | "down"
    size: float  # relative change (or absolute, for rates and shares)
    start_time: float
    detected_time: float
    evidence: dict[str, float | int | str]
    active: bool = True

    def to_json(self) -> dict:
        return {
            "id": self.id, "signal": self.signal, "tier": self.tier, "direction": self.direction,
            "size": round(self.size, 4), "start_time": self.start_time, "detected_time": self.detected_time,
            "evidence": self.evidence, "active": self.active,
        }


@dataclass(slots=True)
class _Series:
    spec: SignalSpec
    tier: str | None
    test: SequentialTest
    baseline: RollingBaseline
    warmup: int
    since_alarm: list[tuple[float, float]] = field(default_factory=list)
    alert: Alert | None = None
    old_center: float = 0.0
    back_in_band: int = 0


class DriftMonitor:
    """Runs one sequential test per (signal, tier) and keeps the alerts."""

    def __init__(self, method: Method = "cusum", *, warmup: int = 10, baseline_size: int = 30, lag: int = 6,
                 bucket_s: float = 60.0, false_alarms_per_day: float = 0.1, series: int = 12) -> None:
        self.cusum_h = threshold_for(false_alarms_per_day, series, bucket_s)
        # The noise's autocorrelation is summed over the buckets an alarm's evidence spans:
        # at most Z_CLIP - k per bucket, so a false alarm needs >= h / (Z_CLIP - k) buckets and
        # typically ~h (increments ~1): the long-run variance over ceil(h) lags.
        self.lrv_lags = math.ceil(self.cusum_h)
        make_test(method)  # validate early
        self.method = method
        self.warmup, self.baseline_size, self.lag = warmup, baseline_size, lag
        self._series: dict[tuple[str, str | None], _Series] = {}
        self.alerts: list[Alert] = []
        self._ids = itertools.count(1)
        self._spec_low: dict[str, int] = {}

    def _get(self, signal: str, tier: str | None) -> _Series:
        key = (signal, tier)
        if key not in self._series:
            self._series[key] = _Series(SIGNALS[signal], tier, make_test(self.method, self.cusum_h),
                                        RollingBaseline(self.baseline_size, self.lag, lags=self.lrv_lags,
                                                        early_fit=SIGNALS[signal].load_driven or SIGNALS[signal].mix_driven,
                                                        floored=SIGNALS[signal].load_driven),
                                        self.warmup)
        return self._series[key]

    def observe(self, t: float, values: dict[tuple[str, str | None], float | None]) -> list[Alert]:
        """Feed one bucket's values (missing = None); returns the alerts raised now."""
        raised = []
        ctx = {k: v for k, v in values.items() if k[0] in CONTEXT}
        for (signal, tier), x in values.items():
            if x is None or signal in CONTEXT or math.isnan(x):
                continue
            scope = None if signal in FLEET_SCOPED else tier
            n = ctx.get(("requests", scope))
            load = tuple(ctx.get((k, scope)) for k in ("input_tokens", "output_tokens"))
            features = tuple(float(v) / 1000.0 for v in load) if all(v is not None for v in load) else ()
            series = self._get(signal, tier)
            if features and series.spec.load_driven:
                features = load_features(features)
            elif features and series.spec.mix_driven:
                features = mix_features(features)
            alert = self._observe_one(series, t, x, features,  # type: ignore[arg-type]
                                      float(n) if n is not None and n > 0 else 1.0)
            if alert is not None:
                raised.append(alert)
        return raised

    def _observe_one(self, s: _Series, t: float, x: float, features: tuple[float, ...] = (),
                     count: float = 1.0) -> Alert | None:
        if s.alert is not None and s.alert.active:
            shift = abs(s.alert.evidence["current"] - s.old_center)  # type: ignore[operator]
            s.back_in_band = s.back_in_band + 1 if abs(x - s.old_center) < shift / 2 else 0
            if s.back_in_band >= 3:
                s.alert.active = False
        if len(s.baseline) < s.warmup:
            s.baseline.push(x, None, features, count)
            return None
        center, scale = s.baseline.center(features), s.baseline.scale(s.spec, features)
        if s.spec.binomial:  # sampling noise at this rate and bucket size (per reference bucket: x weight)
            p = min(max(center, 0.5 / count), 1.0)
            scale = max(scale, s.baseline.weight(count) * math.sqrt(p * (1 - p) / count))
        if s.baseline.unseen(features):  # a load a young baseline has not seen: learn it, do not test it
            s.baseline.push(x, x - center, features, count)
            return None
        s.since_alarm.append((t, x))
        z = (x - center) * s.baseline.weight(count) / scale
        z = min(max(z, -Z_CLIP), Z_CLIP)  # one wild bucket cannot alarm alone
        hit = s.test.update(z, t)
        if hit is None:
            s.baseline.push(x, x - center, features, count)
            del s.since_alarm[: max(0, len(s.since_alarm) - 60)]
            return None
        direction, start = hit
        run = [v for tt, v in s.since_alarm if tt >= start] or [x]
        current = statistics.fmean(run)
        change = current - center
        size = change / abs(center) if s.spec.relative and center != 0 else change
        statistic, threshold = s.test.statistic, s.test.threshold
        s.test.reset()
        s.since_alarm.clear()
        if abs(size) < s.spec.min_effect:  # statistically real but too small to matter
            s.baseline.push(x, x - center, features, count)
            return None
        alert = Alert(
            id=next(self._ids), signal=s.spec.name, tier=s.tier, direction=direction, size=size,
            start_time=start, detected_time=t,
            evidence={"method": self.method, "baseline": round(center, 6), "scale": round(scale, 6),
                      "current": round(current, 6), "windows": len(run),
                      "statistic": round(statistic, 3), "threshold": round(threshold, 3)},
        )
        if s.alert is not None:
            s.alert.active = False
        s.alert, s.old_center, s.back_in_band = alert, center, 0
        s.baseline.clear()  # re-learn the new normal
        self.alerts.append(alert)
        return alert

    def check_speculative(self, t: float, tier: str, acceptance: float | None, k: int,
                          draft_cost: float = 0.0, sustain: int = 5) -> Alert | None:
        """Raise `spec_net_loss` when acceptance stays below break-even for `sustain` buckets."""
        if acceptance is None:
            return None
        floor = spec_break_even(k, draft_cost)
        low = self._spec_low.get(tier, 0) + 1 if acceptance < floor else 0
        self._spec_low[tier] = low
        existing = next((a for a in self.alerts if a.signal == SPEC_NET_LOSS and a.tier == tier and a.active), None)
        if low == 0 and existing is not None:
            existing.active = False
        if low != sustain or existing is not None:
            return None
        alert = Alert(
            id=next(self._ids), signal=SPEC_NET_LOSS, tier=tier, direction="down",
            size=round(spec_speedup(acceptance, k, draft_cost) - 1.0, 4),
            start_time=t - (sustain - 1) * 60.0, detected_time=t,
            evidence={"acceptance": round(acceptance, 4), "break_even": round(floor, 4),
                      "num_speculative_tokens": k},
        )
        self.alerts.append(alert)
        return alert

    def active(self) -> list[Alert]:
        return [a for a in self.alerts if a.active]


def spec_speedup(acceptance: float, k: int, draft_cost: float = 0.0, verify_cost: float = 0.06) -> float:
    """Decode speed with speculation relative to without (Leviathan et al. 2023).

    Expected tokens per verification step (1 - a^(k+1)) / (1 - a), over the step's cost:
    the target's pass grows by `verify_cost` per extra verified token and the drafter
    costs `draft_cost` (relative to a target step) per proposed token; ngram ~ 0.
    """
    a = min(max(acceptance, 0.0), 0.999999)
    tokens = (1 - a ** (k + 1)) / (1 - a)
    return tokens / (1 + k * (draft_cost + verify_cost))


def spec_break_even(k: int, draft_cost: float = 0.0) -> float:
    """The acceptance rate below which speculative decoding is a net loss (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if spec_speedup(mid, k, draft_cost) < 1.0:
            lo = mid
        else:
            hi = mid
    return hi


def cost_index(s: TierSummary) -> float | None:
    """A tier's dollars over the baseline dollars of the requests its engines served (None
    under 20 requests or with nothing served).

    Per tier, because the tiers' price ratios to the baseline differ ~10x: a fleet-wide
    ratio moves with the routing mix (`routing_share`'s to watch), and a fleet index with
    slow weights moves with its weights. Cache hits are left out of the denominator: they
    carry baseline dollars and cost nothing, so their share (the hit rates' to watch) would
    read as a price change. What is left moves with the tier's price and its tokens'
    input/output mix only (the mix is the baseline's regressor: `mix_features`). Measured:
    docs/design/drift.md, "Cost per tier over what the engines served".
    """
    served = s.baseline_dollars - s.cache_baseline_dollars
    return s.dollars / served if s.requests >= 20 and served > 0 else None


def bucket_signals(fleet: FleetView, end: float, span_s: float) -> dict[tuple[str, str | None], float | None]:
    """The drift signals for the bucket (end - span_s, end]."""
    whole: TierSummary = fleet.summary(None, end, span_s)
    out: dict[tuple[str, str | None], float | None] = {
        ("savings_ratio", None): whole.savings_ratio,
        ("error_rate", None): whole.error_rate if whole.requests >= 20 else None,
        ("cache_hit_rate_exact", None): whole.exact_hit_rate if whole.answerable >= 20 else None,
        ("cache_hit_rate_semantic", None): whole.semantic_hit_rate if whole.answerable >= 20 else None,
    }
    # The fleet's bucket size for the weights and the hit rates' binomial floor: what could be answered.
    out.update({("requests", None): whole.answerable, ("input_tokens", None): whole.input_tokens,
                ("output_tokens", None): whole.output_tokens})
    shares = fleet.routing_share(end, span_s)
    multi = len(fleet.tier_names) > 1
    for name in fleet.tier_names:
        s = fleet.summary(name, end, span_s)
        enough = s.requests >= 20
        out.update({("requests", name): s.requests, ("input_tokens", name): s.input_tokens,
                    ("output_tokens", name): s.output_tokens})
        out[("ttft_per_1k_prompt", name)] = (
            1000.0 * s.ttft.sum / s.input_tokens if enough and s.input_tokens > 0 and s.ttft.count else None)
        out[("cost_index", name)] = cost_index(s)
        # The mean, not the median: the median is interpolated inside 25 ms-wide histogram
        # buckets, so it bends wherever the load moves it across an edge and no load slope
        # explains it; the mean is exact, and the prefill interference that makes its tail
        # follow prompt tokens is what the baseline's load regression takes out.
        out[("itl_mean", name)] = s.itl.sum / s.itl.count if enough and s.itl.count else None
        out[("spec_acceptance", name)] = s.spec_acceptance if s.spec_draft_tokens >= 200 else None
        if multi and whole.requests >= 20:
            out[("routing_share", name)] = shares.get(name)
    return out
