"""`thrifty bench balance`: prefix-cache hit rate and load balance of the real balancer.

Replays a Mooncake-format trace (`hash_ids`: one id per 512-token prefix block) in
virtual time through `thrifty.proxy.balance.balancer` (the same filters, scorers and picker the
sidecar runs) against N simulated replicas, each with a bounded LRU prefix cache.
Policies: round_robin, least_loaded, thrifty (approximate prefix affinity: the sidecar's
own model of each cache), precise (prefix affinity from the caches' KV-cache events, in
vLLM's wire format, through the sidecar's decoder and index); reference `limit` = one
cache holding the combined capacity of all replicas (what perfect affinity with no load
limit could reach). The precise policy's events come from the cache whose hits are
scored (the bench's per-replica LRU), flushed after each request. The trace's hash ids
stand in for token ids (one per 512-token block; the simulator publishes them so).
Azure-format CSVs carry no prefix content (no hash ids), so this bench refuses them.

`--scenario multi-tenant` replays a seeded llm-d-style workload instead (many tenants,
each with a shared multi-thousand-token system context, short queries) and reports
P50/P90 time to first token per policy from the simulated replicas' timing; there the
precise policy reads each `SimReplica`'s own block manager events.

Load in virtual time comes from a pluggable `LoadModel`. The default, `SimReplicaLoad`,
runs one `thrifty.sim.model.SimReplica` per replica (vLLM's continuous batching,
chunked prefill, KV blocks and its own prefix cache, with a GPU profile's timings), and
the balancer sees what the sidecar sees in production: the tokens of its requests not
yet finished plus the engine's waiting/running/KV-cache gauges. `--load token-queue`
keeps the earlier, simpler stand-in (`TokenQueueLoad`: FIFO prefill at `prefill_tps`,
decode at `tpot_s` per token). Either way the hit rate reported is the bench's own
bounded LRU per replica, so it is comparable with the single-cache `limit`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from thrifty.profiles import PROFILES, GpuProfile, get_profile
from thrifty.sim.kv_events import SimKvEventPublisher
from thrifty.sim.model import SimReplica, SimRequest
from thrifty.proxy.balance.balancer import POLICIES, build_balancer
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.kv_events import ReplicaKvFeed, decode_seq
from thrifty.proxy.balance.pool import ReplicaState

BLOCK_TOKENS = 512
DEFAULT_EPSILON = 2.0  # the balancer's own default (proxy/balance/balancer.py)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]


def load_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with path.open() as fh:
        if fh.readline().startswith("TIMESTAMP,"):
            raise SystemExit(f"thrifty bench balance: {path}: an Azure-format CSV has no hash_ids, so no prefix-cache "
                             "hit rate can be measured on it; use a Mooncake-format trace or --scenario multi-tenant")
        fh.seek(0)
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(TraceRequest(float(row["timestamp"]) / 1000.0, int(row["input_length"]),
                                        int(row["output_length"]), tuple(int(h) for h in row["hash_ids"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"thrifty bench balance: {path}:{n}: not a Mooncake trace row ({exc})") from None
            if limit and len(out) >= limit:
                break
    if not out:
        raise SystemExit(f"thrifty bench balance: {path}: no requests")
    return sorted(out, key=lambda r: r.arrival_s)


class LruPrefixCache:
    """An engine's prefix cache: a hit is the run of leading blocks it still holds.

    With `events`, it reports what it stores and evicts as vLLM's KV-cache events do.
    """

    def __init__(self, capacity: int, events: SimKvEventPublisher | None = None) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.events = events

    def serve(self, blocks: tuple[int, ...]) -> int:
        hit = 0
        for h in blocks:
            if h not in self.blocks:
                break
            hit += 1
        events = self.events
        parent: int | None = None
        for h in blocks:
            if h in self.blocks:
                self.blocks.move_to_end(h)
            else:
                self.blocks[h] = None
                if events is not None:
                    events.stored(h, parent)
            parent = h
        while len(self.blocks) > self.capacity:
            gone, _ = self.blocks.popitem(last=False)
            if events is not None:
                events.removed(gone)
        return hit


def feed_frames(feed: ReplicaKvFeed, frames: list[tuple[bytes, bytes, bytes]]) -> None:
    """Hand published frames to the sidecar's feed, as its ZeroMQ subscriber would."""
    for _topic, seq, payload in frames:
        feed.receive(decode_seq(seq), payload)


class LoadModel(Protocol):
    def submit(self, replica: int, req: TraceRequest, cached_tokens: int, now: float) -> None: ...
    def advance(self, now: float) -> None: ...
    def observe(self, replica: int, state: ReplicaState) -> None:
        """Write what the sidecar would know about the replica into `state`."""


class SimReplicaLoad:
    """Simulated vLLM replicas (`SimReplica`, one GPU profile) on the trace's virtual clock."""

    def __init__(self, replicas: int, profile: GpuProfile) -> None:
        self.sims = [SimReplica(profile, seed=i, hash_block_tokens=BLOCK_TOKENS) for i in range(replicas)]
        self.outstanding = [0] * replicas
        self._open: dict[int, tuple[int, int]] = {}  # request id -> (replica, tokens)
        self._next_id = 0
        self.ttfts: list[float] = []  # seconds, of every finished request

    def submit(self, replica: int, req: TraceRequest, cached_tokens: int, now: float) -> None:
        self._next_id += 1
        tokens = req.input_tokens + req.output_tokens
        try:
            self.sims[replica].submit(SimRequest(self._next_id, now, req.input_tokens, req.output_tokens, req.blocks), now)
        except ValueError as exc:
            raise SystemExit(f"thrifty bench balance: {exc}; choose a --profile with a larger KV cache") from None
        self.outstanding[replica] += tokens
        self._open[self._next_id] = (replica, tokens)

    def advance(self, now: float) -> None:
        for sim in self.sims:
            for done in sim.advance(now):
                replica, tokens = self._open.pop(done.id)
                self.outstanding[replica] -= tokens
                self.ttfts.append(done.first_token_time - done.arrival)

    def observe(self, replica: int, state: ReplicaState) -> None:
        sim = self.sims[replica]
        state.inflight_tokens = self.outstanding[replica]
        state.waiting, state.running, state.kv_usage = float(sim.waiting), float(sim.running), sim.kv_usage


class TokenQueueLoad:
    """Simple token-based queue model (documented stand-in, not calibrated to a GPU)."""

    def __init__(self, replicas: int, prefill_tps: float, tpot_s: float) -> None:
        self.prefill_tps = prefill_tps
        self.tpot_s = tpot_s
        self.prefill_free_at = [0.0] * replicas
        self.outstanding = [0] * replicas
        self._finishing: list[tuple[float, int, int]] = []

    def submit(self, replica: int, req: TraceRequest, cached_tokens: int, now: float) -> None:
        start = max(now, self.prefill_free_at[replica])
        self.prefill_free_at[replica] = start + max(req.input_tokens - cached_tokens, 0) / self.prefill_tps
        finish = self.prefill_free_at[replica] + req.output_tokens * self.tpot_s
        tokens = req.input_tokens + req.output_tokens
        self.outstanding[replica] += tokens
        heapq.heappush(self._finishing, (finish, replica, tokens))

    def advance(self, now: float) -> None:
        while self._finishing and self._finishing[0][0] <= now:
            _, replica, tokens = heapq.heappop(self._finishing)
            self.outstanding[replica] -= tokens

    def observe(self, replica: int, state: ReplicaState) -> None:
        state.inflight_tokens = self.outstanding[replica]


@dataclass(slots=True)
class PolicyResult:
    policy: str
    hit_rate: float
    imbalance: float
    tokens_per_replica: list[int]


def make_load(kind: str, replicas: int, *, profile: str, prefill_tps: float, tpot_s: float) -> LoadModel:
    if kind == "sim":
        return SimReplicaLoad(replicas, get_profile(profile))
    return TokenQueueLoad(replicas, prefill_tps, tpot_s)


def run_policy(policy: str, trace: list[TraceRequest], replicas: int, capacity: int, *, load_kind: str = "sim",
               profile: str = "a100-llama3-8b", prefill_tps: float = 10000.0, tpot_s: float = 0.03,
               epsilon: float = DEFAULT_EPSILON) -> PolicyResult:
    states = [ReplicaState(url=f"sim://{i}", tier="bench") for i in range(replicas)]
    precise = policy == "precise"
    publishers = [SimKvEventPublisher() if precise else None for _ in range(replicas)]
    feeds = {s.url: ReplicaKvFeed() for s in states} if precise else None
    balancer = build_balancer(policy, prefix_capacity_blocks=capacity, epsilon=epsilon, kv_feeds=feeds)
    index = {id(s): i for i, s in enumerate(states)}
    caches = [LruPrefixCache(capacity, publishers[i]) for i in range(replicas)]
    load = make_load(load_kind, replicas, profile=profile, prefill_tps=prefill_tps, tpot_s=tpot_s)
    assigned = [0] * replicas
    hit_blocks = total_blocks = 0
    for req in trace:
        load.advance(req.arrival_s)
        for i, s in enumerate(states):
            load.observe(i, s)
        pick = balancer.pick(PickRequest(blocks=req.blocks, tokens=req.input_tokens + req.output_tokens,
                                         token_ids=req.blocks), states)
        assert pick is not None  # every simulated replica is healthy and unsaturated
        i = index[id(pick.replica)]
        hit = caches[i].serve(req.blocks)
        publisher = publishers[i]
        if publisher is not None and feeds is not None:
            feed_frames(feeds[states[i].url], publisher.flush(req.arrival_s))
        hit_blocks += hit
        total_blocks += len(req.blocks)
        load.submit(i, req, min(hit * BLOCK_TOKENS, req.input_tokens), req.arrival_s)
        assigned[i] += req.input_tokens + req.output_tokens
    mean = sum(assigned) / replicas
    return PolicyResult(policy, hit_blocks / max(total_blocks, 1), max(assigned) / mean if mean else 1.0, assigned)


@dataclass(frozen=True)
class TenantScenario:
    """llm-d-style multi-tenant long context: each request = its tenant's shared system context + a short query."""

    tenants: int = 150
    context_tokens: int = 6000
    query_tokens: tuple[int, int] = (100, 400)
    output_tokens: tuple[int, int] = (50, 200)
    qps: float = 12.0
    duration_s: float = 300.0
    seed: int = 0

    def requests(self) -> list[TraceRequest]:
        """Poisson arrivals, tenants drawn uniformly; hash ids as Mooncake's (one per 512-token block)."""
        import random

        rng = random.Random(self.seed)
        ctx_blocks = -(-self.context_tokens // BLOCK_TOKENS)
        next_id = self.tenants * ctx_blocks
        out: list[TraceRequest] = []
        t = 0.0
        while True:
            t += rng.expovariate(self.qps)
            if t >= self.duration_s:
                return out
            tenant = rng.randrange(self.tenants)
            query = rng.randint(*self.query_tokens)
            blocks = [tenant * ctx_blocks + j for j in range(ctx_blocks)]
            for _ in range(-(-query // BLOCK_TOKENS)):  # the query's own blocks: never shared
                blocks.append(next_id)
                next_id += 1
            out.append(TraceRequest(t, ctx_blocks * BLOCK_TOKENS + query, rng.randint(*self.output_tokens), tuple(blocks)))


@dataclass(slots=True)
class TtftResult:
    policy: str
    p50_s: float
    p90_s: float
    hit_rate: float  # prompt tokens served from the simulated replicas' prefix caches
    imbalance: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_ttft(policy: str, trace: list[TraceRequest], replicas: int, *, profile: str = "a100-llama3-8b",
             epsilon: float = DEFAULT_EPSILON, sidecars: int = 1, seed: int = 0) -> TtftResult:
    """Replay `trace` on simulated vLLM replicas; TTFT and prefix hits come from the simulator itself.

    `sidecars` > 1: that many sidecars share the replicas, each request reaching one of them at
    random (a fleet of gateways in front of one pool): each keeps its own balancer, so an
    approximate scorer knows only what its own sidecar sent, while every sidecar's precise
    scorer reads all the replicas' KV events."""
    import random

    load = SimReplicaLoad(replicas, get_profile(profile))
    precise = policy == "precise"
    publishers = [SimKvEventPublisher() for _ in range(replicas)] if precise else []
    for sim, pub in zip(load.sims, publishers):
        sim.kv_events = pub
    # The approximate scorer is told each replica's real cache size, in trace blocks (its best case).
    cache_blocks = load.sims[0].kv_blocks * load.sims[0].profile.block_tokens // BLOCK_TOKENS
    fleet = []
    for _ in range(sidecars):
        states = [ReplicaState(url=f"sim://{i}", tier="bench") for i in range(replicas)]
        feeds = {s.url: ReplicaKvFeed() for s in states} if precise else None
        fleet.append((states, feeds, build_balancer(policy, prefix_capacity_blocks=cache_blocks, epsilon=epsilon,
                                                    kv_feeds=feeds)))
    rng = random.Random(seed)
    assigned = [0] * replicas
    for req in trace:
        load.advance(req.arrival_s)
        if precise:
            for i, pub in enumerate(publishers):
                frames = pub.flush(req.arrival_s)
                for states, feeds, _ in fleet:
                    feed_frames(feeds[states[i].url], frames)  # type: ignore[index]
        states, _, balancer = fleet[rng.randrange(sidecars)]
        index = {id(s): i for i, s in enumerate(states)}
        for i, s in enumerate(states):
            load.observe(i, s)
        pick = balancer.pick(PickRequest(blocks=req.blocks, tokens=req.input_tokens + req.output_tokens,
                                         token_ids=req.blocks), states)
        assert pick is not None
        i = index[id(pick.replica)]
        load.submit(i, req, 0, req.arrival_s)
        assigned[i] += req.input_tokens + req.output_tokens
    load.advance(float("inf"))
    hits = sum(sim.stats.prefix_hits for sim in load.sims)
    queries = sum(sim.stats.prefix_queries for sim in load.sims)
    mean = sum(assigned) / replicas
    return TtftResult(policy, _percentile(load.ttfts, 0.5), _percentile(load.ttfts, 0.9), hits / max(queries, 1),
                      max(assigned) / mean if mean else 1.0)


def limit_hit_rate(trace: list[TraceRequest], capacity: int) -> float:
    cache = LruPrefixCache(capacity)
    hit = total = 0
    for req in trace:
        hit += cache.serve(req.blocks)
        total += len(req.blocks)
    return hit / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thrifty bench balance", description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, help="Mooncake-format JSON lines (timestamp, input_length, output_length, hash_ids)")
    p.add_argument("--scenario", choices=("trace", "multi-tenant"), default="trace",
                   help="trace: hit rate on --trace (default); multi-tenant: seeded long-context tenants, TTFT per policy")
    p.add_argument("--tenants", type=int, default=TenantScenario.tenants, help="multi-tenant: tenants")
    p.add_argument("--context-tokens", type=int, default=TenantScenario.context_tokens, help="multi-tenant: shared system context per tenant")
    p.add_argument("--qps", type=float, default=TenantScenario.qps, help="multi-tenant: mean arrival rate")
    p.add_argument("--duration-s", type=float, default=TenantScenario.duration_s, help="multi-tenant: virtual seconds of arrivals")
    p.add_argument("--seed", type=int, default=0, help="multi-tenant: generator seed")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--capacity-blocks", type=int, default=None, help="prefix-cache blocks per replica (default: distinct blocks / (2 x replicas))")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests")
    p.add_argument("--load", choices=("sim", "token-queue"), default="sim",
                   help="load model: simulated vLLM replicas (default) or the simple token queue")
    p.add_argument("--profile", default="a100-llama3-8b", choices=sorted(PROFILES), help="sim load: GPU profile of each replica")
    p.add_argument("--prefill-tps", type=float, default=10000.0, help="token-queue load: prefill tokens/s per replica")
    p.add_argument("--tpot-ms", type=float, default=30.0, help="token-queue load: ms per output token")
    p.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON, help=f"bounded-load slack of the prefix policies (default {DEFAULT_EPSILON:g}, the balancer's own: see docs/design/prefix-routing.md)")
    p.add_argument("--sidecars", type=int, default=4, help="multi-tenant: sidecars sharing the replicas, each request to one at random (default 4: a fleet of pods in front of one pool; 1: one sidecar sees everything, so its approximate model is exact)")
    args = p.parse_args(argv)
    if args.replicas < 1:
        print("thrifty bench balance: --replicas must be >= 1", file=sys.stderr)
        return 2
    if args.scenario == "multi-tenant":
        return multi_tenant_main(args)
    if args.trace is None:
        print("thrifty bench balance: --trace is required (or --scenario multi-tenant)", file=sys.stderr)
        return 2
    if not args.trace.is_file():
        print(f"thrifty bench balance: trace not found: {args.trace}", file=sys.stderr)
        return 2
    trace = load_trace(args.trace, args.limit)
    distinct = len({h for r in trace for h in r.blocks})
    capacity = args.capacity_blocks or max(1, distinct // (2 * args.replicas))
    results = {pol: run_policy(pol, trace, args.replicas, capacity, load_kind=args.load, profile=args.profile,
                               prefill_tps=args.prefill_tps, tpot_s=args.tpot_ms / 1000.0, epsilon=args.epsilon)
               for pol in POLICIES}
    load_desc = (f"simulated vLLM, profile {args.profile}" if args.load == "sim" else
                 f"token queue, {args.prefill_tps:.0f} prefill tok/s, {args.tpot_ms:.0f} ms/token")
    limit = limit_hit_rate(trace, capacity * args.replicas)
    print(f"trace {args.trace.name}: {len(trace)} requests, {distinct} distinct blocks; "
          f"{args.replicas} replicas x {capacity} blocks (load model: {load_desc})")
    print(f"{'policy':<14}{'hit rate':>10}{'vs limit':>10}{'imbalance':>11}")
    for pol in ("round_robin", "least_loaded", "thrifty", "precise"):
        r = results[pol]
        print(f"{pol:<14}{r.hit_rate:>10.3f}{r.hit_rate / limit if limit else 0:>10.3f}{r.imbalance:>11.3f}")
    print(f"{'limit':<14}{limit:>10.3f}{1.0:>10.3f}{'-':>11}")
    t = results["thrifty"]
    print(json.dumps({
        "hit_rate": round(t.hit_rate, 4),
        "round_robin_hit_rate": round(results["round_robin"].hit_rate, 4),
        "least_loaded_hit_rate": round(results["least_loaded"].hit_rate, 4),
        "limit_hit_rate": round(limit, 4),
        "ratio_vs_limit": round(t.hit_rate / limit, 4) if limit else None,
        "imbalance": round(t.imbalance, 4),
        "round_robin_imbalance": round(results["round_robin"].imbalance, 4),
        "least_loaded_imbalance": round(results["least_loaded"].imbalance, 4),
        "precise_hit_rate": round(results["precise"].hit_rate, 4),
        "precise_ratio_vs_limit": round(results["precise"].hit_rate / limit, 4) if limit else None,
        "precise_imbalance": round(results["precise"].imbalance, 4),
        "replicas": args.replicas,
        "capacity_blocks": capacity,
        "requests": len(trace),
        "load_model": args.load,
    }))
    return 0


def multi_tenant_main(args: argparse.Namespace) -> int:
    if args.tenants < 1 or args.context_tokens < 1 or args.qps <= 0 or args.duration_s <= 0:
        print("thrifty bench balance: --tenants, --context-tokens, --qps and --duration-s must be > 0", file=sys.stderr)
        return 2
    scenario = TenantScenario(tenants=args.tenants, context_tokens=args.context_tokens, qps=args.qps,
                              duration_s=args.duration_s, seed=args.seed)
    trace = scenario.requests()
    if not trace:
        print("thrifty bench balance: the scenario produced no requests (raise --qps or --duration-s)", file=sys.stderr)
        return 2
    order = ("round_robin", "least_loaded", "thrifty", "precise")
    if args.sidecars < 1:
        print("thrifty bench balance: --sidecars must be >= 1", file=sys.stderr)
        return 2
    results = {pol: run_ttft(pol, trace, args.replicas, profile=args.profile, epsilon=args.epsilon,
                             sidecars=args.sidecars, seed=args.seed) for pol in order}
    print(f"multi-tenant scenario: {len(trace)} requests, {scenario.tenants} tenants x {scenario.context_tokens}-token "
          f"contexts, queries {scenario.query_tokens[0]}-{scenario.query_tokens[1]} tokens, {scenario.qps:g} req/s, "
          f"seed {scenario.seed}; {args.replicas} simulated replicas ({args.profile}) behind {args.sidecars} sidecar(s)")
    print(f"{'policy':<14}{'TTFT p50 s':>12}{'TTFT p90 s':>12}{'hit rate':>10}{'imbalance':>11}")
    for pol in order:
        r = results[pol]
        print(f"{pol:<14}{r.p50_s:>12.3f}{r.p90_s:>12.3f}{r.hit_rate:>10.3f}{r.imbalance:>11.3f}")
    out: dict[str, object] = {"scenario": "multi-tenant"}
    for pol in order:
        r = results[pol]
        out[f"{pol}_ttft_p50_s"] = round(r.p50_s, 4)
        out[f"{pol}_ttft_p90_s"] = round(r.p90_s, 4)
        out[f"{pol}_hit_rate"] = round(r.hit_rate, 4)
        out[f"{pol}_imbalance"] = round(r.imbalance, 4)
    approx = results["thrifty"].p90_s
    out["precise_p90_vs_approximate"] = round(results["precise"].p90_s / approx, 4) if approx > 0 else None
    out.update({"requests": len(trace), "replicas": args.replicas, "sidecars": args.sidecars, "tenants": scenario.tenants,
                "context_tokens": scenario.context_tokens, "qps": scenario.qps, "seed": scenario.seed})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
