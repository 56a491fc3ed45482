"""Per-tier replica targets: pure policy on a caller-supplied clock (no I/O, no sleeps).

Load is measured in replica units from what a replica can hold within the SLO:
in-flight sequences (running + waiting) against a target concurrency, and KV-cache use
against a target fill. It is projected one start-up delay ahead with Holt's linear
forecast of the token arrival rate, because a replica asked for now only helps after
it has started. Scale-up is immediate and sized in one step (fewer, larger actions);
scale-down takes the highest recommendation of the stabilisation window and drains.
Tiers are coupled through the routing share: each tier's demand is the fleet's
forecast times its share, so when the router moves traffic (or an operator moves the
threshold) the tier gaining share scales up at once and the other releases capacity.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class TierPolicy:
    name: str
    min_replicas: int = 1
    max_replicas: int = 8
    scale_to_zero: bool = False
    startup_s: float = 90.0  # replica start-up delay (pod scheduled -> model loaded)
    target_concurrency: float = 32.0  # sequences one replica holds within the ITL SLO
    target_kv: float = 0.75  # KV-cache fill one replica should stay under
    slo_ttft_s: float = 2.0
    down_stabilization_s: float = 300.0
    idle_to_zero_s: float = 300.0  # no arrivals this long -> zero (when allowed)
    headroom: float = 1.1  # spare capacity for sub-interval bursts
    # Engine cost model (from the tier's performance profile): seconds of engine time per
    # prompt token and per generated token at the target batch. 0 = not known.
    prefill_s_per_token: float = 0.0
    decode_s_per_token: float = 0.0
    target_utilization: float = 0.85


@dataclass(slots=True)
class TierObservation:
    """What the fleet view says about one tier at `time` (sums over replicas)."""

    time: float
    ready: int
    starting: int = 0
    waiting: float = 0.0  # engine queues, sum over replicas
    running: float = 0.0
    kv_usage: float = 0.0  # sum over ready replicas of the 0-1 fill
    queue_depth: float = 0.0  # sidecar admission queue (requests held at zero replicas)
    token_rate: float = 0.0  # input + output tokens/s arriving at this tier
    input_rate: float = 0.0  # of which prompt tokens/s
    output_rate: float = 0.0  # of which generated tokens/s
    ttft_p95_s: float | None = None
    routing_share: float | None = None


@dataclass(slots=True)
class Decision:
    time: float
    tier: str
    from_replicas: int
    to_replicas: int
    reason: str

    @property
    def direction(self) -> str:
        return "up" if self.to_replicas > self.from_replicas else "down"


class HoltForecast:
    """Holt's double exponential smoothing; `forecast(h)` is h seconds ahead."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.2) -> None:
        self.alpha, self.beta = alpha, beta
        self.level: float | None = None
        self.trend = 0.0  # per second
        self.last_t = 0.0

    def update(self, t: float, x: float) -> None:
        if self.level is None:
            self.level, self.last_t = x, t
            return
        dt = max(t - self.last_t, 1e-9)
        prev = self.level
        self.level = self.alpha * x + (1 - self.alpha) * (self.level + self.trend * dt)
        self.trend = self.beta * (self.level - prev) / dt + (1 - self.beta) * self.trend
        self.last_t = t

    def forecast(self, horizon_s: float) -> float:
        if self.level is None:
            return 0.0
        return max(0.0, self.level + self.trend * horizon_s)


@dataclass(slots=True)
class _TierState:
    policy: TierPolicy
    target: int
    forecast: HoltForecast = field(default_factory=HoltForecast)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, recommendation)
    last_arrival: float = 0.0
    pin: tuple[int, int] | None = None

    def bounds(self) -> tuple[int, int]:
        lo, hi = self.pin or (self.policy.min_replicas, self.policy.max_replicas)
        if self.pin is None and self.policy.scale_to_zero:
            lo = 0
        return lo, hi


class Autoscaler:
    """Call `decide(now, observations)` every interval; apply the decisions it returns."""

    def __init__(self, tiers: list[TierPolicy], *, initial: dict[str, int] | None = None) -> None:
        initial = initial or {}
        self._tiers = {
            p.name: _TierState(p, initial.get(p.name, max(p.min_replicas, 1 if not p.scale_to_zero else 0)))
            for p in tiers
        }
        self.paused = False
        self._fleet_forecast = HoltForecast()
        self._share_override: dict[str, float] = {}

    # -- operator actions ---------------------------------------------------
    def pin(self, tier: str, lo: int | None, hi: int | None) -> None:
        """Pin a tier's bounds (both None unpins); the next decision honours them."""
        state = self._tiers[tier]
        if lo is None and hi is None:
            state.pin = None
            return
        lo = state.policy.min_replicas if lo is None else lo
        hi = state.policy.max_replicas if hi is None else hi
        if lo < 0 or hi < lo:
            raise ValueError(f"pin needs 0 <= min <= max, got min={lo} max={hi}")
        state.pin = (lo, hi)

    def expect_shares(self, shares: dict[str, float]) -> None:
        """The router is about to move traffic (e.g. new threshold): plan with these shares."""
        self._share_override = dict(shares)

    def target(self, tier: str) -> int:
        return self._tiers[tier].target

    def bounds(self, tier: str) -> tuple[int, int]:
        return self._tiers[tier].bounds()

    def pinned(self, tier: str) -> bool:
        return self._tiers[tier].pin is not None

    def set_target(self, tier: str, replicas: int) -> None:
        """Adopt the replica count actually in place (e.g. read back from Kubernetes)."""
        self._tiers[tier].target = replicas

    # -- the policy ---------------------------------------------------------
    def decide(self, now: float, obs: dict[str, TierObservation]) -> list[Decision]:
        fleet_rate = sum(o.token_rate for o in obs.values())
        self._fleet_forecast.update(now, fleet_rate)
        shares = self._shares(obs, fleet_rate)
        decisions = []
        for name, state in self._tiers.items():
            o = obs.get(name)
            if o is None:
                continue
            want, reason = self._recommend(now, state, o, shares.get(name), fleet_rate)
            lo, hi = state.bounds()
            want = min(max(want, lo), hi)
            if not state.recent:  # the window starts with what is in place
                state.recent.append((now, state.target))
            state.recent.append((now, want))
            while len(state.recent) > 1 and state.recent[1][0] <= now - state.policy.down_stabilization_s:
                state.recent.popleft()
            new = state.target
            if want > state.target:
                new = want
            elif want < state.target:
                stable = max(r for _, r in state.recent)
                if stable < state.target:
                    new, reason = stable, f"stable for {state.policy.down_stabilization_s:.0f}s: {reason}"
            new = min(max(new, lo), hi)
            if self.paused:  # frozen: no changes, pins included, until resumed
                continue
            if new != state.target:
                decisions.append(Decision(now, name, state.target, new, reason))
                state.target = new
        return decisions

    def _shares(self, obs: dict[str, TierObservation], fleet_rate: float) -> dict[str, float | None]:
        shares: dict[str, float | None] = {}
        for name, o in obs.items():
            shares[name] = o.token_rate / fleet_rate if fleet_rate > 0 else o.routing_share
        if self._share_override:
            # Drop the override once the observed shares have caught up with it.
            if all(abs((shares.get(n) or 0.0) - s) < 0.05 for n, s in self._share_override.items()):
                self._share_override = {}
            else:
                shares.update(self._share_override)
        return shares

    def _recommend(self, now: float, state: _TierState, o: TierObservation,
                   share: float | None, fleet_rate: float) -> tuple[int, str]:
        p = state.policy
        if o.token_rate > 0 or o.queue_depth > 0 or o.running + o.waiting > 0:
            state.last_arrival = now
        if o.ready + o.starting == 0:
            if o.queue_depth > 0 or o.token_rate > 0:
                return max(1, p.min_replicas), "requests waiting at zero replicas"
            return state.target, "idle"
        # Current load in replica units.
        conc_load = (o.running + o.waiting + o.queue_depth) / p.target_concurrency
        kv_load = o.kv_usage / p.target_kv
        compute_load = (o.input_rate * p.prefill_s_per_token + o.output_rate * p.decode_s_per_token) / p.target_utilization
        load = max(conc_load, kv_load, compute_load)
        # Growth expected by the time a new replica is up: the fleet forecast times this
        # tier's share, relative to the tier's current arrival rate.
        fleet_future = self._fleet_forecast.forecast(p.startup_s)
        tier_future = fleet_future * share if share is not None else fleet_future
        growth = 1.0
        if o.token_rate > 0:
            growth = min(max(tier_future / o.token_rate, 0.5), 3.0)
        want = math.ceil(load * max(growth, 1.0 if load > 0 else growth) * p.headroom - 1e-9)
        reason = (f"load {load:.2f} replicas (concurrency {conc_load:.2f}, kv {kv_load:.2f}, "
                  f"compute {compute_load:.2f}), growth x{growth:.2f}")
        if growth < 1.0:  # falling: size for the forecast, the stabilisation window guards it
            want = math.ceil(load * growth * p.headroom - 1e-9)
        # SLO headroom: a queue building up or TTFT near the SLO means act now.
        per_replica_wait = o.waiting / max(o.ready, 1)
        if o.ttft_p95_s is not None and o.ttft_p95_s > 0.8 * p.slo_ttft_s or per_replica_wait > 0.25 * p.target_concurrency:
            extra = math.ceil(o.waiting / p.target_concurrency)
            want = max(want, o.ready + o.starting + max(1, extra))
            reason = f"SLO headroom: ttft p95 {o.ttft_p95_s or 0:.2f}s, waiting {o.waiting:.0f}; " + reason
        if o.queue_depth > 0:
            want = max(want, 1)
        if p.scale_to_zero and now - state.last_arrival >= p.idle_to_zero_s:
            return 0, f"no arrivals for {p.idle_to_zero_s:.0f}s"
        return max(want, 1), reason
