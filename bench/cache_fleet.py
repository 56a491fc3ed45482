"""`thrifty bench cache --sidecars N [--shared]`: the semantic cache across a fleet of sidecars.

Replays a QQP-style stream (each pair's `text_a`, then later its `text_b`, interleaved)
spread round-robin over N sidecar caches, each with its own capacity, three ways:
per-pod caches (today), the shared tier (every cache a `SharedSemanticCache` mirror on a
real Redis; inserts travel over the Redis Stream), and one pod holding everything (the
ceiling). Every request looks up its pod's cache and, on a miss, stores its question.
A hit is correct when the stored question and the query are the same text or a
labelled-positive pair; precision = correct hits / hits; hit_rate = hits / requests.
The shared run is paced (`--rate`), so inserts race real lookups; it measures the
lookup time on the sidecar (mirror ANN + verifier) and insert-to-visible time on every
other sidecar. `--restart-entries` then fills Redis and times a fresh mirror's rebuild.

The N sidecars are N `SharedSemanticCache` objects in this process, each with its own
Redis connections and stream consumer, on one event loop (a pessimistic stand-in for N
processes: they share one core's worth of loop time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from thrifty.training.qqp_pairs import pairs_and_labels as load_pairs

PARTITION = "bench-fleet"  # one tenant and context: the crowded, hardest case


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet (--sidecars N)")
    g.add_argument("--sidecars", type=int, default=0, help="replay across N sidecar caches (per-pod vs one pod vs, with --shared, the shared tier)")
    g.add_argument("--shared", action="store_true", help="also run the shared tier on Redis")
    g.add_argument("--redis-url", help="Redis for --shared (default: start a local redis-server in a temp dir)")
    g.add_argument("--rate", type=float, default=400.0, help="requests per second the shared run replays at")
    g.add_argument("--gap", type=int, default=400, help="text_b follows its text_a by 1..GAP requests")
    g.add_argument("--pod-bytes", type=int, default=256 * 1024 * 1024, help="each sidecar's semantic cache capacity")
    g.add_argument("--restart-entries", type=int, default=0, help="entries in Redis for the mirror-rebuild timing (0: skip)")
    g.add_argument("--restart-partitions", type=int, default=64, help="tenant/context partitions those entries spread over")


def run(args: argparse.Namespace) -> int:
    if args.sidecars < 1:
        raise ValueError("--sidecars must be at least 1")
    return asyncio.run(_run(args))


def _stream(n_pairs: int, gap: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(pair, side) events: side 0 = text_a at 2i, side 1 = text_b 1..gap requests later."""
    at = [(2.0 * i, i, 0) for i in range(n_pairs)] + [(2.0 * i + rng.integers(1, gap + 1) + 0.5, i, 1) for i in range(n_pairs)]
    return [(i, side) for _, i, side in sorted(at)]


class _Score:
    def __init__(self, positives: set[tuple[str, str]]) -> None:
        self.positives = positives
        self.requests = self.hits = self.correct = 0

    def add(self, query: str, cached: str | None) -> None:
        self.requests += 1
        if cached is not None:
            self.hits += 1
            self.correct += cached == query or (cached, query) in self.positives or (query, cached) in self.positives

    def figures(self) -> dict:
        return {"hit_rate": round(self.hits / max(self.requests, 1), 4),
                "precision": round(self.correct / self.hits, 4) if self.hits else None, "hits": self.hits}


async def _run(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.embedder import MODEL_NAME, encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.semantic_cache import SemanticCache
    from thrifty.proxy.levers.verifier import ARTIFACT, Verifier, pair_hash

    verifier = Verifier.load(args.verifier or ARTIFACT)
    pairs, labels = load_pairs(args.data)
    rows = np.array([i for i, (a, b) in enumerate(pairs) if pair_hash(a, b) not in verifier.trained_pairs])
    if len(rows) == 0:
        raise ValueError(f"{args.data}: every pair was used to fit or calibrate the verifier; nothing left to score")
    rng = np.random.default_rng(args.seed)
    if args.max_pairs and len(rows) > args.max_pairs:
        rows = np.sort(rng.choice(rows, args.max_pairs, replace=False))
    pairs = [pairs[i] for i in rows]
    positives = {(a, b) for (a, b), y in zip(pairs, labels[rows], strict=True) if y == 1}
    encoder = encoder_for(args.encoder or MODEL_NAME, threads=1)
    verifier = verifier.for_encoder(encoder.name)
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    vectors = dict(zip(texts, encode_with_disk_cache(encoder, texts, args.embed_cache), strict=True))
    events = [(pairs[i][side], i) for i, side in _stream(len(pairs), args.gap, rng)]

    def cache(cls=SemanticCache, **extra) -> SemanticCache:
        return cls(encoder.dim, max_bytes=args.pod_bytes, ttl_s=86400, similarity_floor=verifier.similarity_floor,
                   verifier=verifier, **extra)

    def replay_local(pods: list[SemanticCache]) -> dict:
        score = _Score(positives)
        for n, (text, _) in enumerate(events):
            pod = pods[n % len(pods)]
            hit = pod.lookup(PARTITION, text, vectors[text])
            score.add(text, hit.cached_text if hit else None)
            if hit is None:
                pod.put(PARTITION, text, vectors[text], {"q": text})
        return score.figures()

    single = replay_local([cache()])
    per_pod = replay_local([cache() for _ in range(args.sidecars)])
    result: dict = {
        "bench": "cache", "mode": "fleet", "data": args.data, "sidecars": args.sidecars, "requests": len(events),
        "pairs": len(pairs), "gap": args.gap, "rate": args.rate,
        "per_pod_hit_rate": per_pod["hit_rate"], "per_pod_precision": per_pod["precision"],
        "single_pod_hit_rate": single["hit_rate"], "single_pod_precision": single["precision"],
    }
    if args.shared:
        result.update(await _shared(args, events, vectors, positives, cache))
        result["shared_vs_single"] = round(result["hit_rate"] / single["hit_rate"], 4) if single["hit_rate"] else None
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    _print_table(result)
    print(json.dumps(result))
    return 0


async def _shared(args, events, vectors, positives, cache) -> dict:
    from prometheus_client import CollectorRegistry

    from thrifty.config import SharedCacheSettings
    from thrifty.proxy.levers.shared.local_server import LocalRedis
    from thrifty.proxy.levers.shared.metrics import SharedMetrics
    from thrifty.proxy.levers.shared.redis_mirror import SharedSemanticCache
    from thrifty.proxy.levers.shared.tier import SharedTier

    with tempfile.TemporaryDirectory(prefix="thrifty-bench-redis-") as tmp:
        server = None
        url = args.redis_url
        if url is None:
            server = LocalRedis(Path(tmp), maxmemory="2gb")
            server.start()
            url = server.url
        prefix = f"bench{os.getpid()}"
        settings = SharedCacheSettings(url=url, key_prefix=prefix, block_ms=1000)

        def pod() -> SharedSemanticCache:
            return cache(SharedSemanticCache, tier=SharedTier(settings, SharedMetrics(CollectorRegistry())))

        pods = [pod() for _ in range(args.sidecars)]
        try:
            return await _replay_shared(args, events, vectors, positives, pods, pod)
        finally:
            for p in pods:
                await p.aclose()
                await p.tier.aclose()
            if server is not None:
                server.stop()


async def _replay_shared(args, events, vectors, positives, pods, make_pod) -> dict:
    from thrifty.proxy.levers.shared.keys import semantic_key

    applied: list[dict[str, float]] = [dict() for _ in pods]
    for i, p in enumerate(pods):
        p.on_apply = lambda entry_id, i=i: applied[i].__setitem__(entry_id, time.perf_counter())
        p.ensure_started()
    await asyncio.gather(*(p.synced.wait() for p in pods))
    score = _Score(positives)
    lookups: list[float] = []
    lookups_cpu: list[float] = []
    inserted: dict[str, tuple[int, float]] = {}
    period = 1.0 / args.rate
    started = time.perf_counter()
    for n, (text, _) in enumerate(events):
        delay = started + n * period - time.perf_counter()
        await asyncio.sleep(max(delay, 0))  # yields to the mirrors' consumers either way
        i = n % len(pods)
        t0, c0 = time.perf_counter(), time.thread_time()
        hit = pods[i].lookup(PARTITION, text, vectors[text])
        lookups.append(time.perf_counter() - t0)
        lookups_cpu.append(time.thread_time() - c0)
        score.add(text, hit.cached_text if hit else None)
        if hit is None:
            entry_id = semantic_key(pods[i].tier.prefix, PARTITION, text)
            if entry_id not in inserted:
                inserted[entry_id] = (i, time.perf_counter())
            pods[i].put(PARTITION, text, vectors[text], {"q": text})
    for p in pods:
        await p.tier.drain()
    await asyncio.sleep(1.0)  # let the last inserts arrive
    visible = [applied[j][eid] - t for eid, (i, t) in inserted.items() for j in range(len(pods)) if j != i and eid in applied[j]]
    expected = len(inserted) * (len(pods) - 1)
    figures = score.figures()
    out = {
        "hit_rate": figures["hit_rate"], "precision": figures["precision"],
        "lookup_p50_ms": round(float(np.percentile(lookups, 50)) * 1e3, 4),
        "lookup_p99_ms": round(float(np.percentile(lookups, 99)) * 1e3, 4),
        "lookup_cpu_p99_ms": round(float(np.percentile(lookups_cpu, 99)) * 1e3, 4),  # without the machine's scheduling stalls
        "visible_p50_ms": round(float(np.percentile(visible, 50)) * 1e3, 3) if visible else None,
        "visible_p99_ms": round(float(np.percentile(visible, 99)) * 1e3, 3) if visible else None,
        "visible_missing": expected - len(visible),  # the other pod already held the same question (content-hashed ids)
        "replay_s": round(time.perf_counter() - started, 2),
    }
    if args.restart_entries:
        out.update(await _restart(args, pods[0], make_pod, vectors))
    return out


async def _restart(args, writer, make_pod, vectors) -> dict:
    """Fill Redis with `--restart-entries` entries, then time a fresh mirror's rebuild."""
    from thrifty.proxy.levers.shared.keys import SemanticEntry, pack_entry, semantic_key

    base = np.stack(list(vectors.values()))
    rng = np.random.default_rng(args.seed + 1)
    r = writer.tier.stream_client  # long read timeout: big pipelines
    prefix, expires = writer.tier.prefix, int(time.time() * 1000 + 3_600_000)
    dim = base.shape[1]
    for start in range(0, args.restart_entries, 2000):
        count = min(2000, args.restart_entries - start)
        noisy = base[rng.integers(0, len(base), count)] + 0.35 * rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        async with r.pipeline(transaction=False) as pipe:
            for k in range(count):
                partition = f"restart-{(start + k) % args.restart_partitions}"
                text = f"synthetic question {start + k}"
                entry = SemanticEntry(partition, text, noisy[k], {"q": text}, expires)
                pipe.set(semantic_key(prefix, partition, text), pack_entry(entry, 1 << 20), px=3_600_000)
            await pipe.execute()
    fresh = make_pod()
    try:
        t0 = time.perf_counter()
        await fresh.rebuild()
        took = time.perf_counter() - t0
        return {"restart_entries": args.restart_entries, "restart_partitions": args.restart_partitions,
                "restart_recover_s": round(took, 2), "restart_mirror_entries": len(fresh)}
    finally:
        await fresh.tier.aclose()


def _print_table(r: dict) -> None:
    print(f"semantic cache across {r['sidecars']} sidecars: {r['data']}  ({r['requests']} requests, {r['pairs']} pairs, gap <= {r['gap']})")
    print(f"{'cache':<28}{'hit rate':>10}{'precision':>11}")
    print(f"{'one pod holds everything':<28}{r['single_pod_hit_rate']!s:>10}{r['single_pod_precision']!s:>11}")
    print(f"{'per-pod caches':<28}{r['per_pod_hit_rate']!s:>10}{r['per_pod_precision']!s:>11}")
    if "hit_rate" in r:
        print(f"{'shared tier (Redis)':<28}{r['hit_rate']!s:>10}{r['precision']!s:>11}")
        print(f"shared: lookup p50 {r['lookup_p50_ms']} ms p99 {r['lookup_p99_ms']} ms (cpu p99 {r['lookup_cpu_p99_ms']} ms); insert visible on every other sidecar "
              f"p50 {r['visible_p50_ms']} ms p99 {r['visible_p99_ms']} ms ({r['visible_missing']} never seen) at {r['rate']} req/s")
    if "restart_recover_s" in r:
        print(f"restart: mirror rebuilt {r['restart_mirror_entries']} of {r['restart_entries']} entries in {r['restart_recover_s']} s")
