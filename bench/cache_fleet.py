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

In the shared run each of the N sidecars is its own process (spawned, one BLAS thread,
its own event loop, Redis clients and stream consumer), driven over a pipe, so the
lookup time is what a pod's loop spends (after the embedding, reported apart as
`embed_p50_ms`/`embed_p99_ms`) and a pod applies only other pods' inserts.
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
    return _run(args)


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


def _run(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.embedder import MODEL_NAME, encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.semantic_cache import SemanticCache
    from thrifty.bench.cache import unseen_pairs
    from thrifty.proxy.levers.verifier import ARTIFACT, Verifier

    verifier = Verifier.load(args.verifier or ARTIFACT)
    pairs, labels, rng, _ = unseen_pairs(args, verifier)
    positives = {(a, b) for (a, b), y in zip(pairs, labels, strict=True) if y == 1}
    encoder = encoder_for(args.encoder or MODEL_NAME, threads=1)
    verifier = verifier.for_encoder(encoder.name)
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    vectors = dict(zip(texts, encode_with_disk_cache(encoder, texts, args.embed_cache), strict=True))
    events = [(pairs[i][side], i) for i, side in _stream(len(pairs), args.gap, rng)]
    embed = []
    for text in texts[:200]:  # the query's embedding, before the sidecar's lookup (reported apart)
        t0 = time.perf_counter()
        encoder.encode([text])
        embed.append(time.perf_counter() - t0)

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
        "embed_p50_ms": round(float(np.percentile(embed, 50)) * 1e3, 3), "embed_p99_ms": round(float(np.percentile(embed, 99)) * 1e3, 3),
    }
    if args.shared:
        result.update(_shared(args, events, vectors, positives, str(args.verifier or ARTIFACT), encoder.name,
                              verifier.similarity_floor))
        result["shared_vs_single"] = round(result["hit_rate"] / single["hit_rate"], 4) if single["hit_rate"] else None
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    _print_table(result)
    print(json.dumps(result))
    return 0


def _shared(args, events, vectors, positives, verifier_path: str, encoder_name: str, floor: float) -> dict:
    """The shared tier: N sidecar processes on one real Redis, driven round-robin at `--rate`."""
    from thrifty.proxy.levers.shared.local_server import LocalRedis

    with tempfile.TemporaryDirectory(prefix="thrifty-bench-redis-") as tmp:
        server = None
        url = args.redis_url
        if url is None:
            server = LocalRedis(Path(tmp), maxmemory="2gb")
            server.start()
            url = server.url
        texts = list(vectors)
        config = {"url": url, "prefix": f"bench{os.getpid()}", "dim": len(next(iter(vectors.values()))),
                  "pod_bytes": args.pod_bytes, "floor": floor, "verifier": verifier_path, "encoder": encoder_name,
                  "texts": texts, "vectors": np.stack([vectors[t] for t in texts])}
        try:
            out = _replay_shared(args, events, texts, positives, config)
            if args.restart_entries:
                out.update(_restart(args, config))
            return out
        finally:
            if server is not None:
                server.stop()


class _Pods:
    """N sidecar processes (`_pod_main`), each its own Python, event loop and Redis clients.

    Protocol over one pipe per pod: ("q", n, text index) -> ("r", n, hit text index or -1,
    lookup s, lookup cpu s, entry id stored or "", perf_counter at the store);
    ("report", wait s) -> ("applied", {entry id: perf_counter when mirrored}); ("stop",).
    perf_counter is CLOCK_MONOTONIC, one clock for every process on the machine.
    """

    def __init__(self, n: int, config: dict, mode: str = "serve") -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fresh interpreters: no loop, threads or BLAS pools inherited
        self.conns, self.procs = [], []
        saved = {k: os.environ.get(k) for k in _ONE_THREAD}
        os.environ.update(_ONE_THREAD)  # what a sidecar pod runs with: one BLAS thread on the loop
        try:
            for _ in range(n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_pod_main, args=(child, config, mode), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def recv(self, i: int, timeout_s: float = 120.0):
        if not self.conns[i].poll(timeout_s):
            raise TimeoutError(f"sidecar process {i} did not answer in {timeout_s:.0f} s")
        return self.conns[i].recv()

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                conn.send(("stop",))
            except OSError:
                pass  # already gone
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _replay_shared(args, events, texts, positives, config) -> dict:
    from multiprocessing.connection import wait

    index = {t: k for k, t in enumerate(texts)}
    pods = _Pods(args.sidecars, config)
    try:
        for i in range(args.sidecars):
            assert pods.recv(i) == ("ready",)
        score = _Score(positives)
        lookups: list[float] = []
        lookups_cpu: list[float] = []
        inserted: dict[str, tuple[int, float]] = {}
        answered = 0

        def take(conn) -> None:
            nonlocal answered
            while conn.poll():
                _, n, hit, took, cpu, entry_id, t_put = conn.recv()
                answered += 1
                lookups.append(took)
                lookups_cpu.append(cpu)
                score.add(events[n][0], texts[hit] if hit >= 0 else None)
                if entry_id and (entry_id not in inserted or inserted[entry_id][1] > t_put):
                    inserted[entry_id] = (n % args.sidecars, t_put)

        period = 1.0 / args.rate
        started = time.perf_counter()
        for n, (text, _) in enumerate(events):
            due = started + n * period
            while (left := due - time.perf_counter()) > 0:
                for conn in wait(pods.conns, left):
                    take(conn)
            pods.conns[n % args.sidecars].send(("q", n, index[text]))
        deadline = time.perf_counter() + 120
        while answered < len(events):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(events) - answered} lookups unanswered after 120 s")
            for conn in wait(pods.conns, 1.0):
                take(conn)
        replay_s = time.perf_counter() - started
        for conn in pods.conns:
            conn.send(("report", 1.0))  # drain writes, then let the last inserts arrive
        applied = [pods.recv(i)[1] for i in range(args.sidecars)]
    finally:
        pods.close()
    visible = [applied[j][eid] - t for eid, (i, t) in inserted.items() for j in range(len(applied)) if j != i and eid in applied[j]]
    expected = len(inserted) * (len(applied) - 1)
    figures = score.figures()
    ms = lambda xs, q, nd=4: round(float(np.percentile(xs, q)) * 1e3, nd) if xs else None  # noqa: E731
    return {
        "hit_rate": figures["hit_rate"], "precision": figures["precision"],
        "lookup_p50_ms": ms(lookups, 50), "lookup_p99_ms": ms(lookups, 99),
        "lookup_cpu_p99_ms": ms(lookups_cpu, 99),  # without the machine's scheduling stalls
        "visible_p50_ms": ms(visible, 50, 3), "visible_p99_ms": ms(visible, 99, 3),
        "visible_missing": expected - len(visible),  # the other pod already held the same question (content-hashed ids)
        "replay_s": round(replay_s, 2),
    }


def _restart(args, config) -> dict:
    """Fill Redis with `--restart-entries` entries, then time a fresh sidecar process's mirror rebuild."""
    import redis

    from thrifty.proxy.levers.shared.keys import SemanticEntry, pack_entry, semantic_key

    base = config["vectors"]
    rng = np.random.default_rng(args.seed + 1)
    prefix, expires = config["prefix"], int(time.time() * 1000 + 3_600_000)
    dim = base.shape[1]
    r = redis.Redis.from_url(config["url"])
    try:
        for start in range(0, args.restart_entries, 2000):
            count = min(2000, args.restart_entries - start)
            noisy = base[rng.integers(0, len(base), count)] + 0.35 * rng.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            pipe = r.pipeline(transaction=False)
            for k in range(count):
                partition = f"restart-{(start + k) % args.restart_partitions}"
                text = f"synthetic question {start + k}"
                entry = SemanticEntry(partition, text, noisy[k], {"q": text}, expires)
                pipe.set(semantic_key(prefix, partition, text), pack_entry(entry, 1 << 20), px=3_600_000)
            pipe.execute()
    finally:
        r.close()
    pods = _Pods(1, {**config, "texts": [], "vectors": base[:0]}, mode="restart")
    try:
        _, took, entries = pods.recv(0, 600)
    finally:
        pods.close()
    return {"restart_entries": args.restart_entries, "restart_partitions": args.restart_partitions,
            "restart_recover_s": round(took, 2), "restart_mirror_entries": entries}


def _pod_main(conn, config: dict, mode: str) -> None:
    """One sidecar's semantic cache in its own process (spawned by `_Pods`)."""
    asyncio.run(_pod(conn, config, mode))


async def _pod(conn, config: dict, mode: str) -> None:
    from prometheus_client import CollectorRegistry

    from thrifty.config import SharedCacheSettings
    from thrifty.proxy.levers.shared.keys import semantic_key
    from thrifty.proxy.levers.shared.metrics import SharedMetrics
    from thrifty.proxy.levers.shared.redis_mirror import SharedSemanticCache
    from thrifty.proxy.levers.shared.tier import SharedTier
    from thrifty.proxy.levers.verifier import Verifier

    verifier = Verifier.load(config["verifier"]).for_encoder(config["encoder"])
    settings = SharedCacheSettings(url=config["url"], key_prefix=config["prefix"], block_ms=1000)
    pod = SharedSemanticCache(config["dim"], tier=SharedTier(settings, SharedMetrics(CollectorRegistry())),
                              max_bytes=config["pod_bytes"] if mode == "serve" else 1 << 34, ttl_s=86400,
                              similarity_floor=config["floor"], verifier=verifier)
    try:
        if mode == "restart":
            t0 = time.perf_counter()
            await pod.rebuild()
            conn.send(("rebuilt", time.perf_counter() - t0, len(pod)))
            conn.recv()
            return
        texts, vectors = config["texts"], config["vectors"]
        index = {t: k for k, t in enumerate(texts)}
        applied: dict[str, float] = {}
        pod.on_apply = lambda entry_id: applied.__setitem__(entry_id, time.perf_counter())
        pod.ensure_started()
        await pod.synced.wait()
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def report(wait_s: float) -> None:
            await pod.tier.drain()
            await asyncio.sleep(wait_s)
            conn.send(("applied", applied))

        def on_message() -> None:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "q":
                    _, n, k = msg
                    text = texts[k]
                    t0, c0 = time.perf_counter(), time.thread_time()
                    hit = pod.lookup(PARTITION, text, vectors[k])
                    took, cpu = time.perf_counter() - t0, time.thread_time() - c0
                    entry_id, t_put = "", 0.0
                    if hit is None:
                        entry_id, t_put = semantic_key(pod.tier.prefix, PARTITION, text), time.perf_counter()
                        pod.put(PARTITION, text, vectors[k], {"q": text})
                    conn.send(("r", n, index[hit.cached_text] if hit else -1, took, cpu, entry_id, t_put))
                elif msg[0] == "report":
                    loop.create_task(report(msg[1]))
                elif not done.done():
                    done.set_result(None)
                    return

        loop.add_reader(conn.fileno(), on_message)
        conn.send(("ready",))
        await done
        loop.remove_reader(conn.fileno())
    finally:
        await pod.aclose()
        await pod.tier.aclose()


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
