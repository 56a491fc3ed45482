"""`thrifty bench balance`: prefix-cache hit rate and load balance of the real balancer.

Replays a Mooncake-format trace (`hash_ids`: one id per 512-token prefix block) in
virtual time through `thrifty.proxy.balance.balancer` (the same filters, scorers and picker the
sidecar runs) against N simulated replicas, each with a bounded LRU prefix cache.
Policies: round_robin, least_loaded, thrifty; reference `limit` = one cache holding the
combined capacity of all replicas (what perfect affinity with no load limit could reach).

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
from thrifty.sim.model import SimReplica, SimRequest
from thrifty.proxy.balance.balancer import POLICIES, build_balancer
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.pool import ReplicaState

BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]


def load_trace(path: Path, limit: int | None = None) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with path.open() as fh:
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
    """An engine's prefix cache: a hit is the run of leading blocks it still holds."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def serve(self, blocks: tuple[int, ...]) -> int:
        hit = 0
        for h in blocks:
            if h not in self.blocks:
                break
            hit += 1
        for h in blocks:
            if h in self.blocks:
                self.blocks.move_to_end(h)
            else:
                self.blocks[h] = None
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return hit


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
               epsilon: float = 1.0) -> PolicyResult:
    balancer = build_balancer(policy, prefix_capacity_blocks=capacity, epsilon=epsilon)
    states = [ReplicaState(url=f"sim://{i}", tier="bench") for i in range(replicas)]
    index = {id(s): i for i, s in enumerate(states)}
    caches = [LruPrefixCache(capacity) for _ in range(replicas)]
    load = make_load(load_kind, replicas, profile=profile, prefill_tps=prefill_tps, tpot_s=tpot_s)
    assigned = [0] * replicas
    hit_blocks = total_blocks = 0
    for req in trace:
        load.advance(req.arrival_s)
        for i, s in enumerate(states):
            load.observe(i, s)
        pick = balancer.pick(PickRequest(blocks=req.blocks, tokens=req.input_tokens + req.output_tokens), states)
        assert pick is not None  # every simulated replica is healthy and unsaturated
        i = index[id(pick.replica)]
        hit = caches[i].serve(req.blocks)
        hit_blocks += hit
        total_blocks += len(req.blocks)
        load.submit(i, req, min(hit * BLOCK_TOKENS, req.input_tokens), req.arrival_s)
        assigned[i] += req.input_tokens + req.output_tokens
    mean = sum(assigned) / replicas
    return PolicyResult(policy, hit_blocks / max(total_blocks, 1), max(assigned) / mean if mean else 1.0, assigned)


def limit_hit_rate(trace: list[TraceRequest], capacity: int) -> float:
    cache = LruPrefixCache(capacity)
    hit = total = 0
    for req in trace:
        hit += cache.serve(req.blocks)
        total += len(req.blocks)
    return hit / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thrifty bench balance", description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, required=True, help="Mooncake-format JSON lines (timestamp, input_length, output_length, hash_ids)")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--capacity-blocks", type=int, default=None, help="prefix-cache blocks per replica (default: distinct blocks / (2 x replicas))")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests")
    p.add_argument("--load", choices=("sim", "token-queue"), default="sim",
                   help="load model: simulated vLLM replicas (default) or the simple token queue")
    p.add_argument("--profile", default="a100-llama3-8b", choices=sorted(PROFILES), help="sim load: GPU profile of each replica")
    p.add_argument("--prefill-tps", type=float, default=10000.0, help="token-queue load: prefill tokens/s per replica")
    p.add_argument("--tpot-ms", type=float, default=30.0, help="token-queue load: ms per output token")
    p.add_argument("--epsilon", type=float, default=1.0, help="bounded-load slack of the thrifty policy (default 1.0: chosen on the first 6,000 requests with 4 and 16 replicas, not on the scored run)")
    args = p.parse_args(argv)
    if not args.trace.is_file():
        print(f"thrifty bench balance: trace not found: {args.trace}", file=sys.stderr)
        return 2
    if args.replicas < 1:
        print("thrifty bench balance: --replicas must be >= 1", file=sys.stderr)
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
    for pol in ("round_robin", "least_loaded", "thrifty"):
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
        "replicas": args.replicas,
        "capacity_blocks": capacity,
        "requests": len(trace),
        "load_model": args.load,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
