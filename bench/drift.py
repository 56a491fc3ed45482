"""`thrifty bench drift --trace FILE`: does the controller's drift detector catch real drifts fast, without crying wolf?

Replays a trace (Azure CSV or Mooncake JSON lines, optionally reshaped by `--variant`)
through a simulated two-tier fleet on a virtual clock (`thrifty.sim.fleet`: "small" =
Llama-3-8B on an A100, "large" = Llama-3-70B on 4x H100, replicas from
`thrifty.sim.model`; each tier gets at least 3 / 2 replicas, more where the trace needs
them to keep its queueing within the SLO: `size_fleet`) behind a simulated sidecar that
answers exact/semantic cache hits itself and routes the rest (a seeded draw per
request; a prompt over the tier's context is forwarded and rejected with the engine's 400,
which the sidecar counts as a request with no tokens, cost or latency, and is never a cache
hit: no engine answered it, so no cache holds it). Every 10 s the
sidecar's window (`StatsWindow`: requests, tokens, dollars, baseline dollars, TTFT/ITL
histograms, cache hits, router decisions) goes into the REAL
`FleetView`; every 60 s the REAL `bucket_signals` + `DriftMonitor` run on it, once per
detection method (CUSUM, Page-Hinkley, EWMA), all on the same windows.

Injected drifts (each at minute 30 of an hour, in `--repeats` replays with different
seeds):
- `cost_step`: dollars per request +20% from one minute on (e.g. a price or a
  tokens-per-request change); caught on `cost_index`, `cost_per_request` or `savings_ratio`;
- `ttft_ramp`: every tier's TTFT grows linearly to +30% over 10 minutes (a replica
  degrading); caught on `ttft_p95` of any tier;
- `cache_collapse`: the semantic cache's hit rate drops to a fifth (an embedding
  model or threshold change); the misses now reach the engines (re-simulated);
- `routing_shift`: the router's share to the small tier drops 0.65 -> 0.45 (a
  threshold or traffic-mix change); the large tier takes the load (re-simulated).
The clean replay (no injection) is run for `--hours` simulated hours (default 24 = a
simulated day): each hour is the trace's hour with the per-minute requests bootstrapped
(resampled with replacement within each minute) under a different seed, so the day keeps
the trace's own load swings and hour-boundary jumps; every alert there is a false alarm.
Cost and TTFT drifts are injected on the telemetry (the engines' work is unchanged);
cache and routing drifts change what the engines receive, so they are simulated.

JSON (last line): `injected`, `detected`, `median_delay_s`, `false_alarms_per_day`,
`false_alarms` (the count) over `clean_days`, `false_alarms_by_signal` (per day, tiers summed)
and `by_drift` (injected, detected and median delay per drift kind) for the controller's configured method
(`--method`, default CUSUM), plus `methods` with the same figures for all three. The
detectors are `DriftMonitor`'s defaults, as `thrifty controller` runs them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from thrifty.controller.drift import METHODS, Alert, DriftMonitor, bucket_signals
from thrifty.controller.fleet import FleetView
from thrifty.sim.fleet import SimTier, TraceError, TraceRequest, replay
from thrifty.sim.traces import VARIANTS, load_trace, make_variant
from thrifty.wire.stats import StatsWindow, TierStats
from thrifty.config import Slo
from thrifty.profiles import get_profile

WINDOW_S = 10.0  # sidecar telemetry window
BUCKET_S = 60.0  # the controller's drift bucket (controller.service.DRIFT_BUCKET_S)
HOUR_S = 3600.0
INJECT_AT_S = 1800.0  # within the drift hour
TIERS = ("small", "large")
PROFILES = {"small": "a100-llama3-8b", "large": "h100-llama3-70b-tp4"}
REPLICAS = {"small": 3, "large": 2}
# Self-hosted dollars per token (input, output): GPU-hour price over a nominal throughput.
PRICE = {"small": (1.79 / 3600 / 20000, 1.79 / 3600 / 2500), "large": (4 * 2.99 / 3600 / 20000, 4 * 2.99 / 3600 / 1500)}
EXACT_HIT, SEMANTIC_HIT = 0.05, 0.15
SMALL_SHARE = 0.65
HIT_TTFT_S = 0.008
DRIFTS = ("cost_step", "ttft_ramp", "cache_collapse", "routing_shift")
# Which alerts count as catching each drift: (signal, direction).
CATCHES = {
    "cost_step": {("cost_per_request", "up"), ("cost_index", "up"), ("savings_ratio", "down")},
    "ttft_ramp": {("ttft_per_1k_prompt", "up"), ("ttft_p95", "up")},
    "cache_collapse": {("cache_hit_rate_semantic", "down")},
    "routing_shift": {("routing_share", "down"), ("routing_share", "up")},
}


@dataclass(slots=True)
class Record:
    """One request as the sidecar saw it."""

    arrival: float
    tier: str
    cache: int  # 0 miss, 1 exact hit, 2 semantic hit
    ttft: float | None  # None = shed
    itl: float | None
    prompt: int
    output: int
    too_long: bool = False  # prompt over the tier's context: the engine's 400 (a client error)


# -- the simulated hour -------------------------------------------------------------
def simulate(trace: list[TraceRequest], *, small_share: Callable[[float], float],
             semantic_hit: Callable[[float], float], seed: int = 0,
             replicas: dict[str, int] | None = None) -> list[Record]:
    """Run the trace through the sidecar's cache + router and the simulated tiers."""
    rng = random.Random(seed)
    draws = [(rng.random(), rng.random()) for _ in trace]  # common random numbers across scenarios
    tiers = {n: SimTier(n, get_profile(PROFILES[n]), max_wait_s=60.0) for n in TIERS}
    for n, t in tiers.items():
        t.start((replicas or REPLICAS)[n], 0.0)
    records: list[Record] = []
    arrivals = []
    context = {n: t.profile.max_model_len for n, t in tiers.items()}
    for i, (r, (u_cache, u_route)) in enumerate(zip(trace, draws)):
        tier = "small" if u_route < small_share(r.arrival) else "large"
        if r.prompt_tokens >= context[tier]:
            # No engine answers it (a 400), so no cache can hold it: forwarded, rejected, no hit drawn.
            arrivals.append((r.arrival, tier, r.prompt_tokens, r.output_tokens, i, ()))
        elif u_cache < EXACT_HIT:
            records.append(Record(r.arrival, tier, 1, HIT_TTFT_S, None, r.prompt_tokens, r.output_tokens))
        elif u_cache < EXACT_HIT + semantic_hit(r.arrival):
            records.append(Record(r.arrival, tier, 2, HIT_TTFT_S, None, r.prompt_tokens, r.output_tokens))
        else:
            arrivals.append((r.arrival, tier, r.prompt_tokens, r.output_tokens, i, ()))
    replay(tiers, arrivals, 5.0, lambda now: None, end_pad_s=120.0)
    served = {s.tag for t in tiers.values() for s in t.served}
    records += [Record(a, tier, 0, None, None, p, o, too_long=True)
                for a, tier, p, o, i, _ in arrivals if i not in served]
    for name, t in tiers.items():
        for s in t.served:
            itl = None
            if s.ttft is not None and s.output_tokens > 1:
                itl = max(0.0, s.finish - s.arrival - s.ttft) / (s.output_tokens - 1)
            records.append(Record(s.arrival, name, 0, s.ttft, itl, s.prompt_tokens, s.output_tokens))
    records.sort(key=lambda r: r.arrival)
    return records


def size_fleet(trace: list[TraceRequest], seed: int, slo_ttft_s: float) -> dict[str, int]:
    """Each tier's smallest fixed replica count (growing by ~25%) serving the clean trace within the SLO.

    Why: a fleet the trace overloads has queues that grow through every replayed hour and
    reset at its end; its latency really does change, so the drift detector would be
    scored against the bench's under-provisioning. A running service has an autoscaler
    keeping it near its SLO; here that is a static count found on the trace itself: none
    shed, and the p95 of engine-served requests' TTFT beyond their own unloaded prefill
    time (prompt tokens x the profile's per-token prefill time) within `slo.ttft_p95_ms`.
    """
    n = {t: 1 for t in TIERS}
    share, hit = (lambda t: SMALL_SHARE), (lambda t: SEMANTIC_HIT)
    for _ in range(20):  # 1 -> ~250 replicas
        records = simulate(trace, small_share=share, semantic_hit=hit, seed=seed, replicas=n)
        short = []
        for tier in TIERS:
            prefill_s = get_profile(PROFILES[tier]).prefill_token_s
            served = [r for r in records if r.tier == tier and r.cache == 0 and not r.too_long]
            shed = sum(1 for r in served if r.ttft is None)
            # the wait beyond the prompt's own unloaded prefill: a 100k-token prompt is slow on any fleet
            ttfts = sorted(r.ttft - r.prompt * prefill_s for r in served if r.ttft is not None)
            p95 = ttfts[int(0.95 * (len(ttfts) - 1))] if ttfts else 0.0
            if shed or p95 > slo_ttft_s:
                short.append(tier)
        if not short:
            return n
        for tier in short:
            n[tier] = max(n[tier] + 1, math.ceil(n[tier] * 1.25))
    return n


def bootstrap(records: list[Record], seed: int) -> list[Record]:
    """Resample each minute's requests with replacement (seed 0 = the records as simulated)."""
    if seed == 0:
        return records
    rng = random.Random(seed)
    out: list[Record] = []
    minute: list[Record] = []
    current = -1
    for r in [*records, None]:
        m = -2 if r is None else int(r.arrival // BUCKET_S)
        if m != current and minute:
            out += sorted((minute[rng.randrange(len(minute))] for _ in minute), key=lambda x: x.arrival)
            minute = []
        if r is not None:
            minute.append(r)
            current = m
    return out


# -- the sidecar's telemetry windows --------------------------------------------------
@dataclass(slots=True)
class Injection:
    """Telemetry-side drifts: multipliers on dollars and on TTFT as functions of hour time."""

    dollars: Callable[[float], float] = lambda t: 1.0
    ttft: Callable[[float], float] = lambda t: 1.0


def windows(records: list[Record], offset: float, inject: Injection, period: float) -> Iterator[StatsWindow]:
    """The sidecar's 10 s windows over one period of records, on the clock `offset + t`."""
    n_windows = int(math.ceil(period / WINDOW_S))
    per: list[dict[str, TierStats]] = [{n: TierStats(tier=n) for n in TIERS} for _ in range(n_windows)]
    for r in records:
        w = int(r.arrival // WINDOW_S)
        if w >= n_windows:
            continue
        ts = per[w][r.tier]
        ts.requests += 1
        if r.too_long:  # the sidecar counts the request (outcome client_error); no usage, no cost
            ts.routed += 1
            ts.client_errors += 1
            continue
        ts.input_tokens += r.prompt
        if r.cache == 1:
            ts.cache_exact_hits += 1
        elif r.cache == 2:
            ts.cache_semantic_hits += 1
        else:
            ts.routed += 1
        big_in, big_out = PRICE["large"]
        baseline = r.prompt * big_in + r.output * big_out
        ts.baseline_dollars += baseline
        if r.cache:  # a hit's baseline, counted apart as the sidecar does
            ts.cache_baseline_dollars += baseline
        if r.ttft is None:
            ts.errors += 1
            continue
        ts.output_tokens += r.output
        if r.cache == 0:
            p_in, p_out = PRICE[r.tier]
            ts.dollars += (r.prompt * p_in + r.output * p_out) * inject.dollars(r.arrival)
        ts.ttft.observe(r.ttft * inject.ttft(r.arrival))
        if r.itl is not None:
            ts.itl.observe(r.itl, max(1, r.output - 1))
    for w, tiers in enumerate(per):
        yield StatsWindow(offset + w * WINDOW_S, offset + (w + 1) * WINDOW_S, list(tiers.values()), seq=w)


@dataclass
class Detectors:
    """The real fleet view and one drift monitor per method, fed the same buckets."""

    fleet: FleetView = field(default_factory=lambda: FleetView(list(TIERS), bucket_s=WINDOW_S, history_s=600.0))
    monitors: dict[str, DriftMonitor] = field(default_factory=lambda: {m: DriftMonitor(m) for m in METHODS})
    next_bucket: float = BUCKET_S

    def feed(self, window: StatsWindow) -> None:
        self.fleet.ingest("sim-sidecar", window)
        while window.window_end >= self.next_bucket - 1e-9:
            values = bucket_signals(self.fleet, self.next_bucket, BUCKET_S)
            for mon in self.monitors.values():
                mon.observe(self.next_bucket, values)
            self.next_bucket += BUCKET_S


# -- the runs -------------------------------------------------------------------------
def clean_day(clean: list[Record], hours: int, period: float, seed: int = 0) -> dict[str, list[Alert]]:
    det = Detectors()
    for h in range(hours):
        for w in windows(bootstrap(clean, seed=1000 + 1000 * seed + h), h * period, Injection(), period):
            det.feed(w)
    return {m: mon.alerts for m, mon in det.monitors.items()}


def drift_run(records: list[Record], drift: str, inject: Injection, seed: int, period: float,
              inject_at: float) -> dict[str, float | None]:
    """Detection delay per method for one injected drift (None = missed)."""
    det = Detectors()
    for w in windows(bootstrap(records, seed), 0.0, inject, period):
        det.feed(w)
    out: dict[str, float | None] = {}
    for m, mon in det.monitors.items():
        hits = [a.detected_time - inject_at for a in mon.alerts
                if (a.signal, a.direction) in CATCHES[drift] and a.detected_time >= inject_at]
        out[m] = min(hits) if hits else None
    return out


def by_signal(alerts: list[Alert], days: float) -> dict[str, float]:
    """False alarms per day for each signal (tiers summed) that raised any."""
    counts: dict[str, int] = {}
    for a in alerts:
        counts[a.signal] = counts.get(a.signal, 0) + 1
    return {k: round(v / days, 2) for k, v in sorted(counts.items())}


def step(at: float, before: float, after: float) -> Callable[[float], float]:
    return lambda t: after if t >= at else before


def ramp(at: float, span: float, size: float) -> Callable[[float], float]:
    return lambda t: 1.0 if t < at else 1.0 + size * min(1.0, (t - at) / span)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thrifty bench drift", description=__doc__.split("\n")[0])
    p.add_argument("--trace", required=True, help="Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or Mooncake JSON lines")
    p.add_argument("--variant", choices=VARIANTS, help="reshape the trace after loading (thrifty.sim.traces.make_variant)")
    p.add_argument("--variant-seed", type=int, default=0, help="seed of --variant (default 0)")
    p.add_argument("--hours", type=int, default=24, help="simulated hours of clean replay for false alarms (default 24)")
    p.add_argument("--repeats", type=int, default=3, help="replays (seeds) per injected drift (default 3)")
    p.add_argument("--method", choices=METHODS, default="cusum", help="the method the headline JSON reports")
    p.add_argument("--limit", type=int, help="use only the first N requests of the trace")
    p.add_argument("--plot", metavar="FILE.png", help="also write each drift's signal with injected and detected points (matplotlib, headless)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the router/cache draws and the replays' resampling (default 0); "
                        "other seeds check that the figures are not one draw's luck")
    args = p.parse_args(argv)
    if args.hours < 1 or args.repeats < 1 or args.seed < 0:
        print("thrifty bench drift: --hours and --repeats must be >= 1, --seed >= 0", file=sys.stderr)
        return 2
    try:
        trace = load_trace(args.trace, args.limit)
        if args.variant:
            trace = make_variant(trace, args.variant, args.variant_seed)
    except TraceError as exc:
        print(f"thrifty bench drift: {exc}", file=sys.stderr)
        return 2
    # One period of the trace, cut at its last whole minute so the replayed hours join without a
    # half-empty bucket (an artefact of the file's length, not of the service).
    span = min(HOUR_S, max(BUCKET_S, math.floor(trace[-1].arrival / BUCKET_S) * BUCKET_S))
    trace = [r for r in trace if r.arrival < span]

    inject_at = min(INJECT_AT_S, math.floor(span / 2 / BUCKET_S) * BUCKET_S)
    base_share, base_hit = (lambda t: SMALL_SHARE), (lambda t: SEMANTIC_HIT)
    sized = size_fleet(trace, args.seed, Slo().ttft_p95_ms / 1000)
    replicas = {t: max(REPLICAS[t], sized[t]) for t in TIERS}  # the bench's fleet, grown where the trace needs it
    clean = simulate(trace, small_share=base_share, semantic_hit=base_hit, seed=args.seed, replicas=replicas)
    simulated = {
        "cost_step": (clean, Injection(dollars=step(inject_at, 1.0, 1.2))),
        "ttft_ramp": (clean, Injection(ttft=ramp(inject_at, 600.0, 0.3))),
        "cache_collapse": (simulate(trace, small_share=base_share, seed=args.seed,
                                    semantic_hit=step(inject_at, SEMANTIC_HIT, SEMANTIC_HIT / 5), replicas=replicas), Injection()),
        "routing_shift": (simulate(trace, small_share=step(inject_at, SMALL_SHARE, 0.45), semantic_hit=base_hit,
                                   seed=args.seed, replicas=replicas), Injection()),
    }
    delays: dict[str, dict[str, list[float | None]]] = {m: {d: [] for d in DRIFTS} for m in METHODS}
    for drift, (records, inject) in simulated.items():
        for r in range(args.repeats):
            replay_seed = r if args.seed == 0 else 100 * args.seed + r  # 0 = the simulated records as they are
            for m, d in drift_run(records, drift, inject, replay_seed, span, inject_at).items():
                delays[m][drift].append(d)
    false = clean_day(clean, args.hours, span, args.seed)
    days = args.hours * span / 86400.0

    results = {}
    for m in METHODS:
        got = [d for ds in delays[m].values() for d in ds if d is not None]
        results[m] = {
            "injected": sum(len(ds) for ds in delays[m].values()), "detected": len(got),
            "median_delay_s": round(statistics.median(got), 1) if got else None,
            "false_alarms_per_day": round(len(false[m]) / days, 2),
            "false_alarms": len(false[m]), "clean_days": round(days, 3),
            "false_alarms_by_signal": by_signal(false[m], days),
            "by_drift": {d: {"injected": len(ds), "detected": sum(x is not None for x in ds),
                             "median_delay_s": (round(statistics.median(x for x in ds if x is not None), 1)
                                                if any(x is not None for x in ds) else None)}
                         for d, ds in delays[m].items()},
        }
    print(f"drift bench: {len(trace)} requests over {span:.0f} s (replayed as one period); {args.repeats} replays per drift injected at "
          f"{inject_at:.0f} s; clean replay {args.hours} periods = {days:.2f} days; 60 s buckets; replicas "
          + ", ".join(f"{t} {n}" for t, n in replicas.items()))
    print(f"{'method':<14}" + "".join(f"{d:>16}" for d in DRIFTS) + f"{'detected':>10}{'median_s':>10}{'false/day':>10}")
    for m in METHODS:
        cells = []
        for d in DRIFTS:
            ds = delays[m][d]
            caught = [x for x in ds if x is not None]
            cells.append(f"{len(caught)}/{len(ds)} " + (f"{statistics.median(caught):.0f}s" if caught else "-"))
        r = results[m]
        med = "-" if r["median_delay_s"] is None else f"{r['median_delay_s']:.0f}"
        print(f"{m:<14}" + "".join(f"{c:>16}" for c in cells)
              + f"{r['detected']:>5}/{r['injected']:<4}{med:>10}{r['false_alarms_per_day']:>10.2f}")
    for m in METHODS:
        kinds: dict[str, int] = {}
        for a in false[m]:
            key = f"{a.signal}[{a.tier or 'fleet'}]"
            kinds[key] = kinds.get(key, 0) + 1
        if kinds:
            print(f"false alarms ({m}): " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    out = {**results[args.method], "method": args.method, "methods": results}
    if args.plot:
        from thrifty.bench import plots
        plots.drift_from_bench(args.plot, simulated, span, inject_at, args.method)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
