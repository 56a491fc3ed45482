"""Per-tier replica targets: pure policy on a caller-supplied clock (no I/O, no sleeps).

Contract: call `Autoscaler.decide(now, observations)` every interval with one
`TierObservation` per tier; apply the `Decision`s it returns. desired = ceil(forecast token
arrivals (finished requests' tokens, at least what the engines processed) / (learned per-replica
capacity x target utilisation x SLO-budget factor)), with
concurrency, KV-cache, backlog and predicted-TTFT floors, and no fewer than a count that
recently missed the SLO at this load; scale-up is immediate, scale-down stabilised,
stepped and held while TTFT is over half the SLO. Tiers are coupled through the routing
share. Why: a replica asked for now only helps after its start-up delay, so demand is
forecast and provisioned for, not chased. Estimators: `autoscale_estimators`; the SLO
budget: `slo_budget`; each rule's measured reason: docs/design/autoscaler.md.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from thrifty.controller.autoscale_estimators import CapacityEstimator, HoltForecast
from thrifty.controller.slo_budget import SloBudget, ttft_slo_s


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
    # Length-aware SLO (slo.ttft_ms_per_1k_prompt_tokens / 1000): seconds added to slo_ttft_s
    # per 1000 prompt tokens. 0 = flat.
    slo_ttft_per_1k_prompt_s: float = 0.0
    down_stabilization_s: float = 300.0
    # A scale-down removes at most this share of the replicas (at least one) per
    # down_step_s: the capacity factor is evidence at the current count only.
    down_step_fraction: float = 0.25
    down_step_s: float = 60.0
    idle_to_zero_s: float = 300.0  # no arrivals this long -> zero (when allowed)
    headroom: float = 1.1  # spare capacity for sub-interval bursts
    # Engine cost model (from the tier's performance profile): seconds of engine time per
    # prompt token and per generated token at the target batch. 0 = not known.
    prefill_s_per_token: float = 0.0
    decode_s_per_token: float = 0.0
    # The decode share the TTFT floor's prefill queue sees; 0 = decode_s_per_token. A speculating
    # tier verifies drafts + 1 tokens per sequence each step, so its decode holds more of every
    # step than the tokens it emits cost on average: its prior here is the cost without speculation.
    ttft_decode_s_per_token: float = 0.0
    target_utilization: float = 0.85
    # Per-replica capacity in tokens/s assumed before telemetry is seen; 0 = derive it from
    # the engine cost model above at the observed prompt/output mix.
    capacity_prior_tokens_s: float = 0.0
    capacity_sample_s: float = 30.0  # served throughput is averaged this long before it counts
    burst_window_s: float = 600.0  # the arrival rate to provision for is this quantile of the
    burst_quantile: float = 0.5  # last window's rates: a replica takes startup_s to help
    # Standing headroom from the traffic's own burstiness: this quantile, over the last
    # burstiness_window_s, of the short-window arrival rate over its mean across the last
    # start-up delay. Replicas asked for now arrive a start-up later, so what is in place must
    # carry the bursts this traffic makes within one start-up; measured, not assumed.
    burstiness_window_s: float = 3600.0
    burstiness_quantile: float = 0.9
    # Predicted TTFT misses (prefill queueing model, `_ttft_floor`) the replica count may allow,
    # as a share of requests; None = the SLO budget itself (1 - slo_target).
    predicted_miss_share: float | None = None
    prompt_scv: float = 0.5  # squared coefficient of variation of prompt lengths the model assumes
    slo_target: float = 0.99  # share of requests within the TTFT SLO; the rest is the budget spent
    # The SLO budget may raise the planned capacity only while arrivals are at least this share
    # of what the ready replicas were planned to carry (slo_budget.SloBudget.observe: loaded).
    loaded_share: float = 0.8
    # Misses remembered: a count that burned the SLO budget (misses over it in the last minute)
    # at some per-replica load is not planned again at that load or more for this long.
    miss_memory_s: float = 1800.0


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
    # Tokens/s (prompt + generated) the ready replicas processed since the last observation,
    # from vllm:prompt_tokens_total + vllm:generation_tokens_total; None = not reported.
    served_token_rate: float | None = None
    # The same engine counters over the arrival rates' span (token_rate's): what the engines
    # processed, a lower bound on the work arriving while finished requests lag (`_arriving`).
    processed_token_rate: float | None = None
    # Requests that got their first token (or were shed) since the last observation, and
    # how many of them missed the TTFT SLO: the error budget's spend.
    ttft_finished: int = 0
    ttft_missed: int = 0
    # Mean prompt tokens of the requests behind ttft_p95_s: where the SLO grows with prompt
    # length, p95 is held to the SLO at this length. None = not reported (flat SLO used).
    mean_prompt_tokens: float | None = None


def _arriving(o: TierObservation) -> TierObservation:
    """The observation with its token rates at least what the engines processed.

    The sidecar counts a request's tokens when it finishes, so on a ramp that outruns the
    replicas the finished rate lags the arrivals: requests pile up running, unfinished. The
    engines' processed tokens, over the same span, are a lower bound on the work arriving;
    the mix stays the finished requests' (measured: docs/design/autoscaler.md, "Demand")."""
    served = o.processed_token_rate
    if served is None or served <= o.token_rate:
        return o
    if o.token_rate <= 0:
        return replace(o, token_rate=served)
    f = served / o.token_rate
    return replace(o, token_rate=served, input_rate=o.input_rate * f, output_rate=o.output_rate * f)


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


@dataclass(slots=True)
class _TierState:
    policy: TierPolicy
    target: int
    forecast: HoltForecast = field(default_factory=HoltForecast)
    capacity: CapacityEstimator = field(default_factory=CapacityEstimator)
    budget: SloBudget = field(default_factory=SloBudget)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, recommendation)
    rates: deque[tuple[float, float]] = field(default_factory=deque)  # (time, token arrival rate) for the burst level
    ratios: deque[tuple[float, float]] = field(default_factory=deque)  # (time, short-window rate / start-up mean)
    readies: deque[tuple[float, int, float]] = field(default_factory=deque)  # (time, ready, tok/s) over the last minute
    last_ready_up: float = -math.inf  # when the ready count last grew
    unsafe: deque[tuple[float, int, float]] = field(default_factory=deque)  # (time, ready, tok/s per replica) that missed
    first_seen: float | None = None  # first observation: the warm-up (`warm`) starts here
    last_arrival: float = 0.0
    last_down: float = -math.inf
    pin: tuple[int, int] | None = None

    def warm(self, now: float) -> bool:
        """Past the tier's first two start-up delays: its rate windows have filled from 0, so a
        ramp in them is traffic, not the controller starting (trends, burstiness, miss records)."""
        return self.first_seen is not None and now - self.first_seen >= 2 * self.policy.startup_s

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
            p.name: _TierState(p, initial.get(p.name, max(p.min_replicas, 1 if not p.scale_to_zero else 0)),
                               budget=SloBudget(target=p.slo_target))
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

    def budget(self, tier: str) -> SloBudget:
        """The tier's SLO error budget: its burn rate and the capacity factor it allows."""
        return self._tiers[tier].budget

    def learned_capacity(self, tier: str) -> float | None:
        """One replica's tokens/s as learned from served telemetry (saturated samples, or the
        most proven within the SLO); None before any sample (the profile prior, if any, stands)."""
        est = self._tiers[tier].capacity
        if est.measured is not None:
            return max(est.measured, est.proven())
        return est.proven() or None

    def set_target(self, tier: str, replicas: int) -> None:
        """Adopt the replica count actually in place (e.g. read back from Kubernetes)."""
        self._tiers[tier].target = replicas

    # -- the policy ---------------------------------------------------------
    def decide(self, now: float, obs: dict[str, TierObservation]) -> list[Decision]:
        obs = {name: _arriving(o) for name, o in obs.items()}
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
                p = state.policy
                # to zero (no arrivals for idle_to_zero_s) at once; otherwise in steps
                if stable < state.target and (stable == 0 or now - state.last_down >= p.down_step_s):
                    step = max(1, int(state.target * p.down_step_fraction))
                    new = stable if stable == 0 else max(stable, state.target - step)
                    reason = f"stable for {p.down_stabilization_s:.0f}s: {reason}"
                    if new > stable:
                        reason += f"; at most {step} down per {p.down_step_s:.0f}s"
                    state.last_down = now
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
        # The TTFT objective the window's p95 is held to: flat, or at the window's mean prompt length.
        slo_s = ttft_slo_s(p.slo_ttft_s, p.slo_ttft_per_1k_prompt_s, o.mean_prompt_tokens or 0.0)
        state.capacity.observe(now, o, slo_s)
        capacity = self._capacity(state, o)
        # The budget's factor is earned only while the replicas carry what they were planned for.
        loaded = (capacity is not None and o.ready > 0
                  and o.token_rate >= p.loaded_share * o.ready * capacity * p.target_utilization)
        state.budget.observe(now, o.ttft_finished, o.ttft_missed, loaded=loaded)
        if o.token_rate > 0 or o.queue_depth > 0 or o.running + o.waiting > 0:
            state.last_arrival = now
        if o.ready + o.starting == 0:
            if o.queue_depth > 0 or o.token_rate > 0:
                return max(1, p.min_replicas), "requests waiting at zero replicas"
            return state.target, "idle"
        if p.scale_to_zero and now - state.last_arrival >= p.idle_to_zero_s:
            return 0, f"no arrivals for {p.idle_to_zero_s:.0f}s"
        # Memory-side floors: sequences in flight and KV-cache fill, in replica units.
        # They grow with the tier's arrivals: the fleet's forecast trend one start-up delay
        # ahead (relative to its smoothed level, so a lagging level is not read as a fall),
        # times any planned change of this tier's routing share.
        if state.first_seen is None:
            state.first_seen = now
        level = self._fleet_forecast.forecast(0.0)
        growth = self._fleet_forecast.forecast(p.startup_s) / level if level > 0 else 1.0
        if not state.warm(now):
            # Warm-up: a fresh controller's rate windows fill from 0, and the forecast reads that
            # ramp as a trend (x1.4-1.5 on the cost bench's large tier: 5 replicas where 2 held).
            growth = min(growth, 1.0)
        if share is not None and o.token_rate > 0:
            growth *= fleet_rate * share / o.token_rate  # 1 unless the shares are being moved
        growth = min(max(growth, 0.5), 3.0)
        tier_future = o.token_rate * growth
        conc_load = (o.running + o.waiting + o.queue_depth) / p.target_concurrency
        kv_load = o.kv_usage / p.target_kv
        want = math.ceil(max(conc_load, kv_load) * growth * p.headroom - 1e-9)
        reason = f"concurrency {conc_load:.2f}, kv {kv_load:.2f} replicas, growth x{growth:.2f}"
        # Compute side: forecast token arrivals over the learned per-replica capacity.
        state.rates.append((now, o.token_rate))
        while state.rates and state.rates[0][0] < now - max(p.burst_window_s, p.startup_s):
            state.rates.popleft()
        level = [r for t, r in state.rates if t >= now - p.burst_window_s]
        burst = float(np.quantile(level, p.burst_quantile)) if len(level) >= 10 else 0.0
        shaped, headroom = self._burst_headroom(now, state, o, growth)
        demand = max(o.token_rate, tier_future, burst, shaped)
        u = p.target_utilization * state.budget.factor
        if capacity is not None and demand > 0:
            token_want = math.ceil(demand / (capacity * u) - 1e-9)
            reason = (f"demand {demand:.0f} tok/s (now {o.token_rate:.0f}, forecast {tier_future:.0f}, "
                      f"burst headroom x{headroom:.2f}) over "
                      f"{capacity:.0f} tok/s/replica x {u:.2f} = {token_want}; " + reason)
            want = max(want, token_want)
        ttft_want = self._ttft_floor(state, o, demand / o.token_rate if o.token_rate > 0 else 1.0, slo_s)
        if ttft_want is not None and ttft_want[0] > want:
            want = ttft_want[0]
            reason = f"predicted TTFT misses {ttft_want[1]:.2%} at {want} replicas; " + reason
        missed_want = self._missed_floor(now, state, o, demand)
        if missed_want is not None and missed_want[0] > want:
            want = missed_want[0]
            reason = (f"{missed_want[1]} replicas missed the SLO at {missed_want[2]:.0f} tok/s each; "
                      + reason)
        # SLO headroom: a queue building up or TTFT near the SLO means act now, sized on the
        # backlog; replicas already starting count, so a slow start-up does not escalate.
        backlog = o.waiting + o.queue_depth
        near_slo = o.ttft_p95_s is not None and o.ttft_p95_s > 0.8 * slo_s
        if near_slo and state.budget.overspent(now) is False:
            # TTFT near the SLO while misses stay within the budget is service time (long
            # prompts), not queueing: more replicas would not bring it down.
            near_slo = False
        if near_slo and now - state.last_ready_up < state.budget.fast_window_s:
            # A replica just became ready: the TTFT window still shows the minute before it.
            # (Escalating on it took Azure prefill-heavy from 3 to 6 replicas where 4 held the SLO.)
            near_slo = False
        if (near_slo and o.ready > 0 and o.token_rate > 0 and now - state.last_down <= p.miss_memory_s
                and state.warm(now) and (state.budget.burn_rate(now, state.budget.fast_window_s) or 0.0) >= 1.0):
            # A scale-down's count queueing at this load, by the last minute's misses (the ten-minute
            # window may still carry a lower count's): remembered as a miss is (`_missed_floor`), so the
            # next scale-down does not return to it at this load (docs/design/autoscaler.md, "Misses
            # remembered").
            state.unsafe.append((now, o.ready, o.token_rate / o.ready))
        if near_slo or o.queue_depth > 0 or o.waiting / max(o.ready, 1) > 0.25 * p.target_concurrency:
            urgent = o.ready + max(1, math.ceil(backlog / p.target_concurrency))
            if urgent > want:
                want = urgent
                reason = f"SLO headroom: ttft p95 {o.ttft_p95_s or 0:.2f}s, backlog {backlog:.0f}; " + reason
        # Scale down only with SLO headroom: at TTFT p95 over half the SLO the replicas are
        # already queueing, and one fewer would turn the next burst into misses.
        # With misses inside the budget a high p95 is service time (long prompts), not queueing.
        if want < state.target and o.ttft_p95_s is not None and o.ttft_p95_s > 0.5 * slo_s \
                and state.budget.overspent(now) is not False:
            want, reason = state.target, f"hold: ttft p95 {o.ttft_p95_s:.2f}s is over half the SLO; " + reason
        return max(want, 1), reason

    @staticmethod
    def _missed_floor(now: float, state: _TierState, o: TierObservation,
                      demand: float) -> tuple[int, int, float] | None:
        """(fewest replicas no remembered miss rules out at `demand`, the count that missed, its load).

        The queueing model and the capacity estimate can both be optimistic about a mix (on Azure
        prefill-heavy every step down to 3 replicas at ~75% of saturated throughput missed the SLO
        and a fixed 4 held it). So the fleet's own outcome is evidence: when misses burn the budget
        at twice its rate over the last minute (twice, not once: a few misses in a minute of Mooncake's
        ~200 requests are noise, not a verdict on the count), the fewest replicas ready in that
        minute and the minute's peak tokens/s per replica are remembered for `miss_memory_s` (the
        misses lag the load that made them; a scale-down's count that queued is recorded the same
        way, in `_recommend`), and no count up to it is planned again at that
        per-replica load or more (not in the first two start-up delays: the rates are still
        filling and misses there are the start's). One record rules out at most one more replica
        than the count that missed, so misses no replica count cures (service time) cannot run
        the fleet up."""
        p = state.policy
        if o.ready > (state.readies[-1][1] if state.readies else o.ready):
            state.last_ready_up = now
        state.readies.append((now, o.ready, o.token_rate))
        window = state.budget.fast_window_s
        while state.readies and state.readies[0][0] < now - window:
            state.readies.popleft()
        fewest = min(r for _, r, _ in state.readies)
        peak = max(x for _, _, x in state.readies)
        burn = state.budget.burn_rate(now, window)
        if state.warm(now) and burn is not None and burn >= 2.0 and fewest > 0 and peak > 0:
            state.unsafe.append((now, fewest, peak / fewest))
        while state.unsafe and state.unsafe[0][0] < now - p.miss_memory_s:
            state.unsafe.popleft()
        best: tuple[int, int, float] | None = None
        for _, n, load in state.unsafe:
            need = min(n + 1, math.floor(demand / load) + 1)
            if best is None or need > best[0]:
                best = (need, n, load)
        return best

    @staticmethod
    def _ttft_floor(state: _TierState, o: TierObservation, scale: float, slo_s: float) -> tuple[int, float] | None:
        """(fewest replicas whose predicted TTFT misses stay within the allowance, that prediction).

        Prefill and decode work are accounted separately: decode steps take a share rho_d of each
        engine's time, prompts queue for the rest, each taking S = prompt x prefill cost / (1 - rho_d),
        so a replica's prefill load is rho = prefill work / (1 - rho_d). The sidecar sends each
        request to the less busy of two replicas (power of two choices), so a request waits behind
        one prefill with probability ~rho^2 and behind two ~rho^6 (the JSQ(2) queue-length tail;
        one replica has no choice: rho and rho^2, as M/G/1);
        the prefill in progress has a residual ~ exponential with mean r = (1 + scv) S / 2. A mean
        request misses when its wait exceeds SLO - S: rho^2 e^(-slack/r) + rho^6 e^(-slack/(r+S)).
        Rates are those the replicas must carry (`scale` x the observed: forecast, bursts). None when
        the engine costs or the prompt length are not known.
        """
        p = state.policy
        if p.prefill_s_per_token <= 0 or not o.mean_prompt_tokens or o.input_rate <= 0:
            return None
        allow = p.predicted_miss_share if p.predicted_miss_share is not None else 1.0 - p.slo_target
        work_p = o.input_rate * scale * p.prefill_s_per_token  # engine-seconds of prefill per second
        work_d = o.output_rate * scale * (p.ttft_decode_s_per_token or p.decode_s_per_token)
        lo = max(1, math.ceil(work_p + work_d + 1e-9))
        miss = 1.0
        for n in range(lo, p.max_replicas + 1):
            rho_d = work_d / n
            rho = (work_p / n) / (1.0 - rho_d)
            if rho >= 1.0:
                continue
            service = o.mean_prompt_tokens * p.prefill_s_per_token / (1.0 - rho_d)
            slack = slo_s - service
            r = (1.0 + p.prompt_scv) * service / 2.0
            # One replica has no second choice: it waits behind one prefill w.p. rho, two rho^2 (M/G/1).
            one, two = (rho, rho ** 2) if n == 1 else (rho ** 2, rho ** 6)
            miss = 1.0 if slack <= 0 else one * math.exp(-slack / r) + two * math.exp(-slack / (r + service))
            if miss <= allow:
                return n, miss
        return p.max_replicas, miss

    @staticmethod
    def _burst_headroom(now: float, state: _TierState, o: TierObservation, growth: float) -> tuple[float, float]:
        """(rate to provision for, headroom): the mean rate of the last start-up delay, grown
        as forecast, times the burstiness this tier's traffic has shown (quantile of short-window
        rate over start-up mean, last burstiness_window_s), at least 1."""
        p = state.policy
        recent = [r for t, r in state.rates if t >= now - p.startup_s]
        mean = sum(recent) / len(recent) if recent else 0.0
        # A ratio counts only once its start-up mean lies wholly after the first start-up delay:
        # the first readings of a fresh controller (or tier) ramp up as its rate window fills, and that ramp
        # read as burstiness held 3x headroom for the next hour (Azure trace, 6 replicas where 3 do).
        if mean > 0 and state.warm(now):
            state.ratios.append((now, o.token_rate / mean))
        while state.ratios and state.ratios[0][0] < now - p.burstiness_window_s:
            state.ratios.popleft()
        if len(state.ratios) < 20:
            return 0.0, 1.0
        h = min(max(float(np.quantile([r for _, r in state.ratios], p.burstiness_quantile)), 1.0), 3.0)
        return mean * max(1.0, growth if h <= 1.0 else 1.0) * h, h

    def _capacity(self, state: _TierState, o: TierObservation) -> float | None:
        """Per-replica tokens/s: learned online, over a prior from the profile at the observed mix."""
        p = state.policy
        prior = p.capacity_prior_tokens_s
        if prior <= 0 and (p.prefill_s_per_token > 0 or p.decode_s_per_token > 0):
            tokens = o.input_rate + o.output_rate
            if tokens > 0:
                cost = (o.input_rate * p.prefill_s_per_token + o.output_rate * p.decode_s_per_token) / tokens
                prior = 1.0 / cost if cost > 0 else 0.0
        if prior <= 0:
            return state.capacity.measured if state.capacity.measured is not None else None
        return state.capacity.capacity(prior)
