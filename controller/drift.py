"""Sustained-change detection on the fleet's signals, one bucket (default 60 s) at a time.

Each (signal, tier) series is standardised against a rolling robust baseline (median,
MAD with a relative floor so a 1% wobble in a very steady signal is not "drift"),
fed to a sequential test, and an alarm becomes an `Alert` with its size, estimated
start time and the evidence. The baseline only absorbs values once they are `lag`
buckets old, so a change under way is not learned as normal before it is caught.

Three tests are implemented (two-sided CUSUM, Page-Hinkley, EWMA chart); CUSUM is the
default, chosen by `thrifty bench drift` (Azure conv trace through a simulated two-tier
fleet, 4 drift kinds x 3 replays, ~1 simulated clean day): CUSUM caught 12/12, median
210 s, 1.03 false alarms/day; Page-Hinkley (delta 0.5, lambda 6) missed the TTFT ramp
(8/12 caught, 0 false alarms); EWMA (lambda 0.3, L 3) caught 12/12 at 150 s but raised
43 false alarms/day. CUSUM uses k = 1 (tuned for shifts of >= 2 scale units, an
in-control run length ~10^5 buckets on Gaussian noise, needed with ~10 series watched)
and h = 5, on z-scores clipped to +-4 so one wild bucket cannot alarm alone.

Signals fed by `bucket_signals` are the mix-robust ones: the bench showed per-request
cost and TTFT p95 swinging +-40% and 2.5x within an hour of the public trace with the
prompt-length mix, so cost drift is watched through the savings ratio (dollars over the
baseline's dollars for the same tokens) and latency drift through TTFT seconds per 1k
prompt tokens (CV ~7% per minute); ITL p95 is steady and kept. Proportions get an
absolute scale floor (0.03 for cache hit rates) matching their binomial noise.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from thrifty.controller.fleet import FleetView, TierSummary

Method = Literal["cusum", "page_hinkley", "ewma"]
METHODS: tuple[Method, ...] = ("cusum", "page_hinkley", "ewma")


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """How noisy a signal is allowed to be: floors on the scale, minimum effect size."""

    name: str
    rel_floor: float  # scale >= rel_floor * |baseline|
    abs_floor: float  # scale >= abs_floor
    min_effect: float  # |shift| must be >= this relative (or absolute for shares/rates) change
    relative: bool = True  # size reported relative to baseline (else absolute difference)


SIGNALS: dict[str, SignalSpec] = {
    s.name: s
    for s in (
        SignalSpec("cost_per_request", 0.05, 1e-9, 0.08),
        SignalSpec("savings_ratio", 0.0, 0.02, 0.05, relative=False),
        SignalSpec("ttft_p95", 0.08, 0.005, 0.15),
        SignalSpec("ttft_per_1k_prompt", 0.06, 1e-4, 0.2),
        SignalSpec("itl_p95", 0.08, 0.001, 0.15),
        SignalSpec("error_rate", 0.0, 0.01, 0.02, relative=False),
        SignalSpec("cache_hit_rate_exact", 0.0, 0.03, 0.05, relative=False),
        SignalSpec("cache_hit_rate_semantic", 0.0, 0.03, 0.05, relative=False),
        SignalSpec("routing_share", 0.0, 0.025, 0.06, relative=False),
        SignalSpec("spec_acceptance", 0.0, 0.03, 0.08, relative=False),
    )
}
SPEC_NET_LOSS = "spec_net_loss"
Z_CLIP = 4.0


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


class SequentialTest(Protocol):
    statistic: float
    threshold: float

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        """Feed one standardised value; on alarm return (direction, estimated start time)."""

    def reset(self) -> None: ...


class Cusum:
    """Two-sided tabular CUSUM: S = max(0, S + z - k); alarm at S > h."""

    def __init__(self, k: float = 1.0, h: float = 5.0) -> None:
        self.k, self.threshold = k, h
        self.reset()

    def reset(self) -> None:
        self.up = self.down = 0.0
        self.up_start = self.down_start = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        if self.up == 0.0:
            self.up_start = t
        if self.down == 0.0:
            self.down_start = t
        self.up = max(0.0, self.up + z - self.k)
        self.down = max(0.0, self.down - z - self.k)
        self.statistic = max(self.up, self.down)
        if self.up > self.threshold:
            return "up", self.up_start
        if self.down > self.threshold:
            return "down", self.down_start
        return None


class PageHinkley:
    """Page-Hinkley on z against its running mean since the last reset."""

    def __init__(self, delta: float = 0.5, lam: float = 6.0) -> None:
        self.delta, self.threshold = delta, lam
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m_up = self.m_down = 0.0
        self.min_up = self.max_down = 0.0
        self.t_min_up = self.t_max_down = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        self.n += 1
        self.mean += (z - self.mean) / self.n
        self.m_up += z - self.mean - self.delta
        self.m_down += z - self.mean + self.delta
        if self.m_up <= self.min_up:
            self.min_up, self.t_min_up = self.m_up, t
        if self.m_down >= self.max_down:
            self.max_down, self.t_max_down = self.m_down, t
        up, down = self.m_up - self.min_up, self.max_down - self.m_down
        self.statistic = max(up, down)
        if up > self.threshold:
            return "up", self.t_min_up
        if down > self.threshold:
            return "down", self.t_max_down
        return None


class Ewma:
    """EWMA control chart: e = lam*z + (1-lam)*e; alarm at |e| > L*sqrt(lam/(2-lam))."""

    def __init__(self, lam: float = 0.3, width: float = 3.0) -> None:
        self.lam = lam
        self.threshold = width * math.sqrt(lam / (2 - lam))
        self.reset()

    def reset(self) -> None:
        self.e = 0.0
        self.start = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        if abs(self.e) < 0.5 * self.threshold:
            self.start = t
        self.e = self.lam * z + (1 - self.lam) * self.e
        self.statistic = abs(self.e)
        if self.e > self.threshold:
            return "up", self.start
        if self.e < -self.threshold:
            return "down", self.start
        return None


def make_test(method: Method) -> SequentialTest:
    if method == "cusum":
        return Cusum()
    if method == "page_hinkley":
        return PageHinkley()
    if method == "ewma":
        return Ewma()
    raise ValueError(f"unknown drift method {method!r}; use one of {', '.join(METHODS)}")


class RollingBaseline:
    """Median and MAD of the last `size` accepted values, fed `lag` buckets late."""

    def __init__(self, size: int = 30, lag: int = 6) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.pending: deque[float] = deque()
        self.lag = lag

    def push(self, x: float) -> None:
        self.pending.append(x)
        while len(self.pending) > self.lag:
            self.values.append(self.pending.popleft())

    def clear(self) -> None:
        self.values.clear()
        self.pending.clear()

    def __len__(self) -> int:
        return len(self.values)

    def center(self) -> float:
        return statistics.median(self.values)

    def scale(self, spec: SignalSpec) -> float:
        med = self.center()
        mad = statistics.median(abs(v - med) for v in self.values) * 1.4826
        return max(mad, spec.rel_floor * abs(med), spec.abs_floor)


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

    def __init__(self, method: Method = "cusum", *, warmup: int = 10, baseline_size: int = 30, lag: int = 6) -> None:
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
            self._series[key] = _Series(SIGNALS[signal], tier, make_test(self.method),
                                        RollingBaseline(self.baseline_size, self.lag), self.warmup)
        return self._series[key]

    def observe(self, t: float, values: dict[tuple[str, str | None], float | None]) -> list[Alert]:
        """Feed one bucket's values (missing = None); returns the alerts raised now."""
        raised = []
        for (signal, tier), x in values.items():
            if x is None or math.isnan(x):
                continue
            alert = self._observe_one(self._get(signal, tier), t, x)
            if alert is not None:
                raised.append(alert)
        return raised

    def _observe_one(self, s: _Series, t: float, x: float) -> Alert | None:
        if s.alert is not None and s.alert.active:
            shift = abs(s.alert.evidence["current"] - s.old_center)  # type: ignore[operator]
            s.back_in_band = s.back_in_band + 1 if abs(x - s.old_center) < shift / 2 else 0
            if s.back_in_band >= 3:
                s.alert.active = False
        if len(s.baseline) < s.warmup:
            s.baseline.push(x)
            return None
        center, scale = s.baseline.center(), s.baseline.scale(s.spec)
        s.since_alarm.append((t, x))
        z = min(max((x - center) / scale, -Z_CLIP), Z_CLIP)  # one wild bucket cannot alarm alone
        hit = s.test.update(z, t)
        if hit is None:
            s.baseline.push(x)
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
            s.baseline.push(x)
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


def bucket_signals(fleet: FleetView, end: float, span_s: float) -> dict[tuple[str, str | None], float | None]:
    """The drift signals for the bucket (end - span_s, end]."""
    whole: TierSummary = fleet.summary(None, end, span_s)
    out: dict[tuple[str, str | None], float | None] = {
        ("savings_ratio", None): whole.savings_ratio,
        ("error_rate", None): whole.error_rate if whole.requests >= 20 else None,
        ("cache_hit_rate_exact", None): whole.exact_hit_rate if whole.requests >= 20 else None,
        ("cache_hit_rate_semantic", None): whole.semantic_hit_rate if whole.requests >= 20 else None,
    }
    shares = fleet.routing_share(end, span_s)
    multi = len(fleet.tier_names) > 1
    for name in fleet.tier_names:
        s = fleet.summary(name, end, span_s)
        enough = s.requests >= 20
        out[("ttft_per_1k_prompt", name)] = (
            1000.0 * s.ttft.sum / s.input_tokens if enough and s.input_tokens > 0 and s.ttft.count else None)
        out[("itl_p95", name)] = s.itl_p95 if enough else None
        out[("spec_acceptance", name)] = s.spec_acceptance if s.spec_draft_tokens >= 200 else None
        if multi and whole.requests >= 20:
            out[("routing_share", name)] = shares.get(name)
    return out
