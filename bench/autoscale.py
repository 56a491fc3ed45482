"""`thrifty bench autoscale --trace FILE`: GPU-hours vs SLO of three scaling policies.

Replays a trace (Azure CSV or Mooncake JSONL, `thrifty.sim.traces`; `--variant` reshapes
it; absolute arrival times kept) through one simulated tier of vLLM replicas on a virtual
clock (`thrifty.sim.fleet`, replicas from `thrifty.sim.model`), in the same run under:
- `static_peak`: a fixed replica count, the smallest that meets the SLO over the
  whole trace, searched up to the autoscalers' peak, all the time;
- `static_slo`: the smallest fixed count that reaches the SLO target (99%, none dropped)
  however many that takes (the same as static_peak when that meets it): the baseline
  the goals are stated against (thrifty <= 0.8x its GPU-hours);
- `keda_threshold`: common practice, KEDA + HPA on `vllm:num_requests_waiting` with a
  target of 5 per replica (AverageValue), 15 s sync, HPA's 10% tolerance, scale-up
  limited to max(4 pods, 100%) per period, 300 s scale-down stabilisation;
- `thrifty`: the controller itself (`ControlPlane`, built from the config the simulated tier
  stands for, policy from `thrifty.controller.policy`), fed the telemetry windows a sidecar
  would send and ticked on the virtual clock; its replica targets are applied.
Replicas take `--startup-s` to start; scale-down drains. Both autoscalers start at the
replica count the trace's first 10 minutes need (found like static_peak), as a running
service would; static_peak's search is a bisection whose failing runs stop at 1% misses. `--copies K` overlays K copies
of the trace (each request repeated with a sub-second jitter) so the tier needs several
replicas, as the sampled public trace stands for a larger service. Prompts of max_model_len
tokens or more are rejected by the simulated engines as vLLM rejects them (400) and reported
as `rejected_too_long`, not as misses or drops. The oracle bound (per-minute replicas at
100% use, no start-up, perfect foresight) is printed with thrifty's GPU-hours over it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from thrifty.config import Config, ConfigError, parse_config
from thrifty.bench._control import ControlledFleet
from thrifty.controller.autoscaler import TierObservation
from thrifty.controller.fleet import FleetView
from thrifty.controller.observe import tier_observation
from thrifty.controller.service import ControlPlane
from thrifty.controller.slo_budget import ttft_slo_s
from thrifty.proxy.observe.metrics import LATENCY_BUCKETS
from thrifty.wire.stats import Histogram, ReplicaStats, StatsWindow, TierStats
from thrifty.sim.fleet import SimTier, TraceError, TraceRequest, replay
from thrifty.sim.traces import VARIANTS, load_trace, make_variant
from thrifty.profiles import GpuProfile, get_profile
from thrifty.sim.model import SimReplica, SimRequest, SpeculativeSim

TIER = "llm"


@dataclass(slots=True)
class RunResult:
    gpu_hours: float
    slo_attainment: float
    scale_actions: int
    dropped: int
    max_replicas: int
    ttft_p95_s: float
    slo_attainment_length_aware: float = float("nan")  # with the prompt-length allowance; = flat when 0
    rejected_too_long: int = 0  # prompts over the profile's context: a 400, neither served nor a miss

    def to_json(self) -> dict:
        return {"gpu_hours": round(self.gpu_hours, 3), "slo_attainment": round(self.slo_attainment, 5),
                "slo_attainment_length_aware": round(self.slo_attainment_length_aware, 5),
                "scale_actions": self.scale_actions, "dropped": self.dropped,
                "rejected_too_long": self.rejected_too_long}

    def meets(self, target: float, length_aware: bool) -> bool:
        """The SLO the run is judged on (length-aware when the allowance is set) reached, none dropped."""
        att = self.slo_attainment_length_aware if length_aware else self.slo_attainment
        return att >= target and not self.dropped


class TierProbe:
    """What the sidecar reports about a simulated tier, through the controller's own path.

    Every tick it builds the telemetry window a sidecar would send (finished requests and
    their tokens, TTFT histogram on the sidecar's buckets, admission queue, and per replica
    the engine gauges and counter deltas the sidecar scrapes), feeds it to a `FleetView`,
    and returns `thrifty.controller.observe.tier_observation` of it: the observation
    `thrifty controller` computes, with the Deployment status's ready/starting counts.
    """

    def __init__(self, tier: SimTier, slo_ttft_s: float = 2.0, plane: ControlPlane | None = None,
                 slo_per_1k_s: float = 0.0) -> None:
        """With `plane`, windows go to that control plane (its fleet view) and the tier's
        ready count to its `ready` (what the controller reads from the Deployment).
        `slo_per_1k_s`: the length-aware TTFT SLO's allowance per 1k prompt tokens."""
        self.tier, self.slo_ttft_s, self.plane = tier, slo_ttft_s, plane
        self.slo_per_1k_s = slo_per_1k_s
        self.fleet = plane.fleet if plane is not None else FleetView([tier.name], bucket_s=10.0, history_s=3600.0)
        self._seen = 0
        self._counters: dict[int, tuple[float, float, float, float]] = {}  # pod id -> engine counters last time
        self._last: float | None = None

    def _replicas(self, now: float) -> list[ReplicaStats]:
        rows = []
        for p in self.tier.pods:
            if p.stopped is not None or p.ready_at > now:
                continue
            st, r = p.replica.stats, p.replica
            now_c = (float(st.prompt_tokens), float(st.generation_tokens), float(st.spec_draft_tokens),
                     float(st.spec_accepted_tokens))
            before = self._counters.get(p.id, now_c)  # a replica's first scrape is its baseline
            self._counters[p.id] = now_c
            d = [max(0.0, a - b) for a, b in zip(now_c, before)]
            rows.append(ReplicaStats(url=f"http://pod-{p.id}", healthy=True, waiting=r.waiting, running=r.running,
                                     kv_cache_usage=r.kv_usage, inflight=p.inflight, prompt_tokens=d[0],
                                     generation_tokens=d[1], spec_draft_tokens=d[2], spec_accepted_tokens=d[3]))
        return rows

    def observe(self, now: float) -> TierObservation:
        fresh = self.tier.served[self._seen:]
        self._seen = len(self.tier.served)
        ttft = Histogram(bounds=LATENCY_BUCKETS)
        for f in fresh:
            if f.ttft is not None:
                ttft.observe(f.ttft)
        ok = [f for f in fresh if f.ttft is not None]
        stats = TierStats(self.tier.name, requests=len(fresh), errors=len(fresh) - len(ok),
                          input_tokens=sum(f.prompt_tokens for f in ok), output_tokens=sum(f.output_tokens for f in ok),
                          ttft=ttft, queue_depth=self.tier.queue_depth(), replicas=self._replicas(now))
        start = now if self._last is None else self._last
        self._last = now
        window = StatsWindow(start, now, [stats])
        ready, starting = self.tier.counts(now)
        if self.plane is not None:
            self.plane.ingest("bench-sidecar", window)
            self.plane.ready[self.tier.name] = ready
        else:
            self.fleet.ingest("bench-sidecar", window)
        missed = sum(1 for f in fresh if f.ttft is None
                     or f.ttft > ttft_slo_s(self.slo_ttft_s, self.slo_per_1k_s, f.prompt_tokens))
        return tier_observation(self.fleet, self.tier.name, now, target=ready + starting, ready=ready,
                                ttft_outcomes=(len(fresh), missed))


class KedaHpa:
    """HPA semantics for KEDA's Prometheus scaler on vllm:num_requests_waiting.

    Follows the HPA controller: an External metric with an AverageValue target gives
    ceil(total / target) unless total / (target x current replicas) is within the
    tolerance; the scale-down stabilisation window starts seeded with the current count
    (HPA does this for a new autoscaler, so it does not drop replicas on its first sync).
    Without Thrifty's sidecar the requests that sidecar holds in its admission queue
    would sit in the engines' queues, so they count as waiting: the same backlog, seen.
    """

    def __init__(self, target: float = 5.0, min_r: int = 1, max_r: int = 64, sync_s: float = 15.0,
                 down_window_s: float = 300.0, tolerance: float = 0.1) -> None:
        self.target, self.min_r, self.max_r = target, min_r, max_r
        self.sync_s, self.down_window_s, self.tolerance = sync_s, down_window_s, tolerance
        self.recs: deque[tuple[float, int]] = deque()
        self.next_sync = 0.0

    def decide(self, now: float, obs: TierObservation, current: int) -> int:
        if now < self.next_sync:
            return current
        self.next_sync = now + self.sync_s
        if not self.recs:
            self.recs.append((now, current))
        metric = obs.waiting + obs.queue_depth  # summed over pods; AverageValue target per replica
        usage = metric / (self.target * max(current, 1))
        if abs(usage - 1.0) <= self.tolerance:
            rec = current
        else:
            rec = math.ceil(metric / self.target)
        rec = min(max(rec, self.min_r), self.max_r)
        self.recs.append((now, rec))
        while self.recs and self.recs[0][0] < now - self.down_window_s:
            self.recs.popleft()
        if rec > current:
            return min(rec, max(current + 4, current * 2), self.max_r)
        stable = max(r for _, r in self.recs)
        return min(current, stable)


def run_policy(trace: list[TraceRequest], profile: GpuProfile, decide: Callable[[float, TierObservation, int], int],
               initial: int, *, startup_s: float, slo_ttft_s: float, tick_s: float, max_wait_s: float,
               slo_per_1k_s: float = 0.0, give_up_misses: int | None = None,
               plane: ControlPlane | None = None) -> RunResult | None:
    """One replay under `decide`; None when more than `give_up_misses` requests already missed the SLO
    (judged length-aware when `slo_per_1k_s` > 0). `plane`: the control plane `decide` runs (its
    telemetry comes from this replay)."""
    tier = SimTier(TIER, profile, startup_s=startup_s, max_wait_s=max_wait_s)
    tier.start(initial, 0.0, ready=True)
    probe = TierProbe(tier, slo_ttft_s=slo_ttft_s, plane=plane, slo_per_1k_s=slo_per_1k_s)
    peak = initial
    seen = misses = 0

    def on_tick(now: float) -> bool:
        nonlocal peak, seen, misses
        live = len(tier.active())
        want = decide(now, probe.observe(now), live)
        if want != live:
            tier.scale_to(want, now)
        peak = max(peak, len(tier.active()))
        served = tier.served
        misses += sum(1 for s in served[seen:]
                      if s.ttft is None or s.ttft > ttft_slo_s(slo_ttft_s, slo_per_1k_s, s.prompt_tokens))
        seen = len(served)
        return give_up_misses is not None and misses > give_up_misses

    arrivals = [(r.arrival, TIER, r.prompt_tokens, r.output_tokens, i, ()) for i, r in enumerate(trace)]
    end = replay({TIER: tier}, arrivals, tick_s, on_tick)
    if give_up_misses is not None and misses > give_up_misses:
        return None
    ok = [s for s in tier.served if s.ttft is not None]
    dropped = len(tier.served) - len(ok)
    within = sum(1 for s in ok if s.ttft <= slo_ttft_s)
    within_la = sum(1 for s in ok if s.ttft <= ttft_slo_s(slo_ttft_s, slo_per_1k_s, s.prompt_tokens))
    ttfts = sorted(s.ttft for s in ok)
    return RunResult(
        gpu_hours=tier.gpu_seconds(end) / 3600, slo_attainment=within / max(1, len(tier.served)),
        scale_actions=tier.scale_actions, dropped=dropped, max_replicas=peak,
        ttft_p95_s=ttfts[int(0.95 * (len(ttfts) - 1))] if ttfts else float("nan"),
        slo_attainment_length_aware=within_la / max(1, len(tier.served)), rejected_too_long=tier.rejected_too_long,
    )


SLO_TARGET = 0.99  # share of requests within the TTFT SLO (config slo.ttft_attainment's default)


def smallest_static(trace: list[TraceRequest], profile: GpuProfile, hi: int, common: dict) -> tuple[int, RunResult]:
    """The smallest fixed count meeting the SLO (>= 99% within the TTFT SLO, none dropped).

    Bisection up to `hi` (assumed enough; if it is not, it is reported as is); a run is cut
    short as soon as it has missed more than 1% of the requests. The SLO is length-aware
    when `common` sets `slo_per_1k_s`.
    """
    aware = common.get("slo_per_1k_s", 0.0) > 0
    top = run_policy(trace, profile, lambda now, o, cur, n=hi: n, hi, **common)
    assert top is not None
    if not top.meets(SLO_TARGET, aware):
        return hi, top
    return _bisect_static(trace, profile, 0, (hi, top), common)


def _bisect_static(trace: list[TraceRequest], profile: GpuProfile, lo: int, best: tuple[int, RunResult],
                   common: dict) -> tuple[int, RunResult]:
    """The smallest count in (lo, best's] meeting the SLO: `lo` is known to miss, `best` meets.
    A run is cut short once it has missed more than 1% of the requests."""
    budget = len(trace) // 100
    aware = common.get("slo_per_1k_s", 0.0) > 0
    hi = best[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = run_policy(trace, profile, lambda now, o, cur, n=mid: n, mid, give_up_misses=budget, **common)
        if r is not None and r.meets(SLO_TARGET, aware):
            hi, best = mid, (mid, r)
        else:
            lo = mid
    return best


def static_slo(trace: list[TraceRequest], profile: GpuProfile, start: tuple[int, RunResult], common: dict,
               cap: int = 512) -> tuple[int, RunResult]:
    """The smallest fixed count that reaches the SLO target on the trace, however many that is.

    `start` is static_peak's answer (bisected up to the autoscalers' peak): when it meets the
    SLO it is this too; otherwise the count doubles until one does (up to `cap`, reported as
    is if even that misses) and `smallest_static` bisects below it. The baseline the issue's
    goals are stated against: a fixed fleet sized to keep the SLO, not to the autoscalers' peak.
    """
    n, r = start
    aware = common.get("slo_per_1k_s", 0.0) > 0
    if r.meets(SLO_TARGET, aware):
        return start
    lo = n
    while n < cap:
        n = min(cap, n * 2)
        r = run_policy(trace, profile, lambda now, o, cur, k=n: k, n, **common)
        assert r is not None
        if r.meets(SLO_TARGET, aware):
            break
        lo = n
    if not r.meets(SLO_TARGET, aware):
        return n, r
    return _bisect_static(trace, profile, lo, (n, r), common)


def fleet_config(tiers: list[tuple[str, GpuProfile, int]], *, startup_s: float, slo_ttft_s: float,
                 target_utilization: float | None = None, slo_per_1k_s: float = 0.0,
                 speculative: dict[str, SpeculativeSim] | None = None) -> Config:
    """The config a bench's simulated tiers stand for: (name, profile, max replicas) each, as
    sim tiers of that profile (speculating where `speculative` names the tier, as its
    `engine.speculative` would say); the policy comes from it through the controller's factory
    (`thrifty.controller.policy`), so every knob is a config field production has too."""
    speculative = speculative or {}

    def engine(name: str, profile: GpuProfile) -> dict:
        out: dict = {"kind": "sim", "sim_profile": profile.name, "max_num_seqs": profile.max_num_seqs}
        if (spec := speculative.get(name)) is not None:
            out["speculative"] = {"method": "ngram", "num_speculative_tokens": spec.num_tokens,
                                  "acceptance_rate": spec.acceptance_rate}
        return out

    data: dict = {
        "tiers": [{"name": name, "model": name, "price": {"gpu_hour": 1.0, "gpus_per_replica": profile.num_gpus},
                   "engine": engine(name, profile),
                   "replicas": {"count": 1, "min": 1, "max": max_r, "startup_s": startup_s}}
                  for name, profile, max_r in tiers],
        "slo": {"ttft_p95_ms": slo_ttft_s * 1000, "ttft_ms_per_1k_prompt_tokens": slo_per_1k_s * 1000},
    }
    if target_utilization is not None:
        data["autoscaler"] = {"target_utilization": target_utilization}
    return parse_config(data, "bench config")


class ThriftyPolicy:
    """`thrifty`: the real `ControlPlane` (`bench/_control.py`) built from the bench's config;
    call as a `run_policy` decide with `plane=self.plane` so it gets the replay's telemetry."""

    def __init__(self, profile: GpuProfile, startup_s: float, slo_ttft_s: float, max_r: int,
                 target_utilization: float | None = None, slo_per_1k_s: float = 0.0) -> None:
        config = fleet_config([(TIER, profile, max_r)], startup_s=startup_s, slo_ttft_s=slo_ttft_s,
                              target_utilization=target_utilization, slo_per_1k_s=slo_per_1k_s)
        self.control = ControlledFleet(config)
        self.plane = self.control.plane

    def __call__(self, now: float, obs: TierObservation, current: int) -> int:
        return self.control.targets(now, {TIER: current})[TIER]


def thrifty_policy(profile: GpuProfile, startup_s: float, slo_ttft_s: float, max_r: int,
                   target_utilization: float | None = None, slo_per_1k_s: float = 0.0) -> ThriftyPolicy:
    return ThriftyPolicy(profile, startup_s, slo_ttft_s, max_r, target_utilization, slo_per_1k_s)


@dataclass(slots=True)
class TraceShape:
    """How bursty the trace is per minute, and the least GPU-hours any policy could spend."""

    request_peak_to_mean: float
    token_peak_to_mean: float
    saturated_tokens_s: float  # one replica's throughput flat out on this trace's mix
    oracle_gpu_hours: float  # per-minute ceil(demand / saturated throughput), no start-up, perfect foresight


def trace_shape(trace: list[TraceRequest], profile: GpuProfile, sample: int = 3000,
                speculative: SpeculativeSim | None = None) -> TraceShape:
    """Peak/mean of whole minutes (a trailing partial minute is left out) and an oracle bound.

    The bound is generous to the policy: every minute gets exactly the replicas its mean
    token rate needs at 100% utilisation (no headroom for bursts within the minute, no
    start-up delay, known in advance). If it exceeds a goal, no SLO-keeping policy meets it.
    """
    minutes = int(trace[-1].arrival // 60) or 1
    reqs = [0] * minutes
    toks = [0] * minutes
    # Only what the fleet serves: a prompt over the context is rejected, an output stops at it.
    trace = [TraceRequest(r.arrival, r.prompt_tokens, min(r.output_tokens, profile.max_model_len - r.prompt_tokens))
             for r in trace if r.prompt_tokens < profile.max_model_len] or trace[:1]
    for r in trace:
        m = int(r.arrival // 60)
        if m < minutes:
            reqs[m] += 1
            toks[m] += r.prompt_tokens + r.output_tokens
    step = max(1, len(trace) // sample)
    picked = trace[::step][:sample]
    picked = (picked * math.ceil(sample / len(picked)))[:sample]  # a short trace is cycled: the replica must stay busy
    replica = SimReplica(profile, speculative=speculative)
    for i, r in enumerate(picked):
        replica.submit(SimRequest(i, 0.0, r.prompt_tokens, r.output_tokens), 0.0)
    replica.advance(20.0)  # past the first fill
    before = replica.stats.prompt_tokens + replica.stats.generation_tokens
    replica.advance(80.0)
    saturated = (replica.stats.prompt_tokens + replica.stats.generation_tokens - before) / 60.0
    oracle = sum(max(1, math.ceil(t / 60.0 / saturated)) for t in toks) / 60.0 * profile.num_gpus
    return TraceShape(max(reqs) / (sum(reqs) / minutes), max(toks) / (sum(toks) / minutes), saturated, oracle)


def overlay(trace: list[TraceRequest], copies: int, seed: int = 0) -> list[TraceRequest]:
    """K copies of the trace at the same absolute times, each request jittered < 1 s."""
    if copies <= 1:
        return trace
    rng = random.Random(seed)
    out = list(trace)
    for _ in range(copies - 1):
        out += [TraceRequest(max(0.0, r.arrival + rng.uniform(-0.5, 0.5)), r.prompt_tokens, r.output_tokens)
                for r in trace]
    out.sort(key=lambda r: r.arrival)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thrifty bench autoscale", description=__doc__.split("\n")[0])
    p.add_argument("--trace", required=True, help="Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or Mooncake JSON lines")
    p.add_argument("--variant", choices=VARIANTS, help="reshape the trace after loading (thrifty.sim.traces.make_variant)")
    p.add_argument("--variant-seed", type=int, default=0, help="seed of --variant (default 0)")
    p.add_argument("--profile", default="a100-llama3-8b", help="simulator profile of the tier's replicas")
    p.add_argument("--copies", type=int, default=2, help="overlay K copies of the trace (default 2)")
    p.add_argument("--startup-s", type=float, default=90.0, help="replica start-up delay (default 90 s)")
    p.add_argument("--slo-ttft-s", type=float, default=2.0, help="TTFT SLO (default 2 s)")
    p.add_argument("--slo-ttft-ms-per-1k-prompt-tokens", type=float, default=0.0, metavar="MS",
                   help="length-aware TTFT SLO: add MS per 1000 prompt tokens (config slo.ttft_ms_per_1k_prompt_tokens; "
                        "default 0 = flat); the autoscaler and static baselines are held to it, both attainments reported")
    p.add_argument("--max-replicas", type=int, default=12, help="max replicas for both autoscalers (default 12)")
    p.add_argument("--limit", type=int, help="use only the first N requests of the trace")
    p.add_argument("--target-utilization", type=float,
                   help="config autoscaler.target_utilization for thrifty (default: the config default)")
    p.add_argument("--plot", metavar="FILE.png", help="also write load, replicas and SLO attainment over time per policy (replays each once more) (matplotlib, headless)")
    args = p.parse_args(argv)
    try:
        trace = load_trace(args.trace, args.limit)
        if args.variant:
            trace = make_variant(trace, args.variant, args.variant_seed)
        profile = get_profile(args.profile)
    except (TraceError, ValueError) as exc:
        print(f"thrifty bench autoscale: {exc}", file=sys.stderr)
        return 2
    if args.copies < 1:
        print("thrifty bench autoscale: --copies must be >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.slo_ttft_ms_per_1k_prompt_tokens <= 60000:
        print("thrifty bench autoscale: --slo-ttft-ms-per-1k-prompt-tokens must be in [0, 60000]", file=sys.stderr)
        return 2
    trace = overlay(trace, args.copies)
    per_1k_s = args.slo_ttft_ms_per_1k_prompt_tokens / 1000.0
    common = dict(startup_s=args.startup_s, slo_ttft_s=args.slo_ttft_s, tick_s=5.0, max_wait_s=30.0,
                  slo_per_1k_s=per_1k_s)

    # A fair start for both autoscalers: the replicas the first minutes need (what a running
    # service would already have), found like static_peak on the trace's first 10 minutes.
    head = [r for r in trace if r.arrival < 600.0]
    initial, _ = smallest_static(head, profile, args.max_replicas, common)
    results: dict[str, RunResult] = {}
    keda = KedaHpa(max_r=args.max_replicas)
    results["keda_threshold"] = run_policy(trace, profile, lambda now, o, cur: keda.decide(now, o, cur), initial,
                                           **common)
    try:
        decide = thrifty_policy(profile, args.startup_s, args.slo_ttft_s, args.max_replicas, args.target_utilization,
                                per_1k_s)
    except ConfigError as exc:
        print(f"thrifty bench autoscale: {exc}", file=sys.stderr)
        return 2
    results["thrifty"] = run_policy(trace, profile, decide, initial, plane=decide.plane, **common)
    decide.control.close()
    static_n, results["static_peak"] = smallest_static(
        trace, profile, max(r.max_replicas for r in results.values()), common)
    slo_n, results["static_slo"] = static_slo(trace, profile, (static_n, results["static_peak"]), common)

    rejected = results["thrifty"].rejected_too_long
    slo_text = f"{args.slo_ttft_s:.1f} s" + (f" + {args.slo_ttft_ms_per_1k_prompt_tokens:g} ms/1k prompt tokens"
                                              if per_1k_s else "")
    print(f"autoscale bench: {len(trace)} requests over {trace[-1].arrival:.0f} s"
          f"{f' ({args.variant} variant, seed {args.variant_seed})' if args.variant else ''}, profile {profile.name}, "
          f"startup {args.startup_s:.0f} s, TTFT SLO {slo_text}, static peak = {static_n} replicas, "
          f"static_slo = {slo_n}, autoscalers start at {initial}")
    if rejected:
        print(f"rejected_too_long: {rejected} requests ({rejected / len(trace):.1%}) have prompts of >= "
              f"{profile.max_model_len} tokens ({profile.name}'s max_model_len): rejected as vLLM does (400), "
              "counted neither as served nor as SLO misses or drops")
    print(f"{'policy':<16}{'gpu_hours':>10}{'slo_attain':>12}{'slo_len_aw':>12}{'actions':>9}{'dropped':>9}"
          f"{'max_repl':>9}{'ttft_p95':>10}")
    names = ("static_peak", "static_slo", "keda_threshold", "thrifty")
    for name in names:
        r = results[name]
        print(f"{name:<16}{r.gpu_hours:>10.2f}{r.slo_attainment:>12.4f}{r.slo_attainment_length_aware:>12.4f}"
              f"{r.scale_actions:>9}{r.dropped:>9}{r.max_replicas:>9}{r.ttft_p95_s:>10.2f}")
    t, k, s, ss = results["thrifty"], results["keda_threshold"], results["static_peak"], results["static_slo"]
    shape = trace_shape(trace, profile)
    ratios = {
        "gpu_hours_vs_static_slo": round(t.gpu_hours / ss.gpu_hours, 3),
        "gpu_hours_vs_static_peak": round(t.gpu_hours / s.gpu_hours, 3),
        "gpu_hours_vs_oracle": round(t.gpu_hours / shape.oracle_gpu_hours, 3),
        "oracle_vs_static_slo": round(shape.oracle_gpu_hours / ss.gpu_hours, 3),
        "actions_vs_keda": round(t.scale_actions / max(1, k.scale_actions), 3),
        "gpu_hours_vs_keda": round(t.gpu_hours / k.gpu_hours, 3),
    }
    print(f"thrifty: gpu_hours / static_slo {ratios['gpu_hours_vs_static_slo']:.2f} (goal <= 0.80), "
          f"actions / keda {ratios['actions_vs_keda']:.2f} (goal <= 0.67), gpu_hours / oracle "
          f"{ratios['gpu_hours_vs_oracle']:.2f}, gpu_hours / keda {ratios['gpu_hours_vs_keda']:.2f}")
    best = shape.oracle_gpu_hours / ss.gpu_hours
    print(f"trace shape (per minute): requests peak/mean {shape.request_peak_to_mean:.2f}, tokens peak/mean "
          f"{shape.token_peak_to_mean:.2f}; one replica flat out serves {shape.saturated_tokens_s:.0f} tok/s on this "
          f"mix; oracle (per-minute replicas at 100% use, no start-up, perfect foresight) "
          f"{shape.oracle_gpu_hours:.2f} gpu_hours = {best:.2f}x static_slo")
    if best > 0.8:
        print(f"note: the trace is too flat for thrifty <= 0.8x static_slo: even the oracle needs {best:.2f}x")
    out: dict = {name: results[name].to_json() for name in names}
    out["oracle"] = {"gpu_hours": round(shape.oracle_gpu_hours, 3)}
    out["ratios"] = ratios
    out["trace"] = {"requests": len(trace), "rejected_too_long": rejected, "variant": args.variant,
                    "static_peak_replicas": static_n, "static_slo_replicas": slo_n, "initial_replicas": initial}
    if args.plot:
        from thrifty.bench import plots
        plots.autoscale_from_bench(args.plot, args, trace, profile, initial, static_n, common)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
