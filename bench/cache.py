"""`thrifty bench cache --data FILE`: precision and recall of the semantic cache on QQP-format pairs.

Each `text_a` is stored in a real `SemanticCache`, then each `text_b` is looked up.
Headline figures are pairwise (each pair in its own partition, so the cache decides on
exactly the labelled pair, as the peer baseline was measured); a "crowded" run puts all
`text_a` in one partition, where a hit on another pair's question is unlabelled and
counted wrong. A hit is correct when the returned entry and the query form a
labelled-positive pair. precision = correct hits / hits; recall = correct hits / positive pairs;
false_hit_rate = wrong hits / lookups. The same run measures the baseline a peer
router uses (MiniLM cosine >= 0.95, no verifier), the precision/recall curve over
the verifier threshold, the index's lookup latency at `--index-entries` entries,
and the embedding latency of one query on one core.

Pairs the shipped verifier was fitted or calibrated on are dropped (the artifact keeps
their hashes); nothing is tuned on the scored file. With the default MiniLM encoder the
verifier runs both stages (embedding MLP, then trees); with another `--encoder` (the
hashed n-grams of the unit tests) it uses its text-only trees (`verifier_stages` says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from thrifty.bench import cache_fleet
from thrifty.training.qqp_pairs import pairs_and_labels as load_pairs


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thrifty bench cache", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="JSON lines {text_a, text_b, label}")
    p.add_argument("--max-pairs", type=int, default=3000, help="score at most this many unseen pairs (0: all)")
    p.add_argument("--index-entries", type=int, default=100_000, help="entries in the index for the latency measurement")
    p.add_argument("--baseline-threshold", type=float, default=0.95)
    p.add_argument("--verifier", help="verifier artifact (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", help="embedding model name (default: all-MiniLM-L6-v2; 'hashed-ngrams:256' needs no model)")
    p.add_argument("--embed-cache", help="npz file to reuse embeddings between runs")
    p.add_argument("--plot", metavar="FILE.png", help="also write precision/recall vs the verifier threshold (matplotlib, headless)")
    cache_fleet.add_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.sidecars:
            return cache_fleet.run(args)
        return _run(args)
    except (OSError, ValueError) as exc:
        print(f"thrifty bench cache: {exc}", file=sys.stderr)
        return 2


def _measure(hit_texts: list[str | None], queries: list[str], positives: set[tuple[str, str]], n_positive: int) -> dict:
    hits = sum(h is not None for h in hit_texts)
    correct = sum(h is not None and (h, q) in positives for h, q in zip(hit_texts, queries, strict=True))
    return {
        "precision": round(correct / hits, 4) if hits else None,
        "recall": round(correct / n_positive, 4) if n_positive else None,
        "false_hit_rate": round((hits - correct) / len(queries), 4),
        "hits": hits,
    }


class UnseenPairs(NamedTuple):
    pairs: list[tuple[str, str]]
    labels: np.ndarray
    rng: np.random.Generator  # after the draw: the caller's later draws continue its sequence
    excluded: int  # pairs left out because the verifier saw them


def unseen_pairs(args: argparse.Namespace, verifier: Any) -> UnseenPairs:
    """The pairs of `args.data` the verifier never saw (neither fit nor calibration), at most
    `args.max_pairs` of them drawn with `args.seed`, with their labels."""
    from thrifty.proxy.levers.verifier import pair_hash

    pairs, labels = load_pairs(args.data)
    rows = np.array([i for i, (a, b) in enumerate(pairs) if pair_hash(a, b) not in verifier.trained_pairs], dtype=int)
    if len(rows) == 0:
        raise ValueError(f"{args.data}: every pair was used to fit or calibrate the verifier; nothing left to score")
    excluded = len(pairs) - len(rows)
    rng = np.random.default_rng(args.seed)
    if args.max_pairs and len(rows) > args.max_pairs:
        rows = np.sort(rng.choice(rows, args.max_pairs, replace=False))
    return UnseenPairs([pairs[i] for i in rows], labels[rows], rng, excluded)


def _run(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.embedder import MODEL_NAME, encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.semantic_cache import HnswIndex, SemanticCache
    from thrifty.proxy.levers.verifier import ARTIFACT, Verifier

    verifier = Verifier.load(args.verifier or ARTIFACT)
    pairs, labels, rng, excluded = unseen_pairs(args, verifier)
    positives = {(a, b) for (a, b), y in zip(pairs, labels, strict=True) if y == 1}
    n_positive = int(labels.sum())

    encoder = encoder_for(args.encoder or MODEL_NAME, threads=1)
    verifier = verifier.for_encoder(encoder.name)  # stage 1 only on the vectors it was trained on
    queries = [b for _, b in pairs]
    one_by_one = []
    for q in queries[:100]:  # one query at a time, one core: what a lone request waits
        started = time.perf_counter()
        encoder.encode([q])
        one_by_one.append(time.perf_counter() - started)
    started = time.perf_counter()
    stored_texts = list(dict.fromkeys(a for a, _ in pairs))
    a_vectors = encode_with_disk_cache(encoder, stored_texts, args.embed_cache)
    b_vectors = encode_with_disk_cache(encoder, queries, args.embed_cache)
    embed_total_s = time.perf_counter() - started

    def simulate(floor: float, with_verifier: bool, crowded: bool) -> list[str | None]:
        """Pairwise: each pair in its own partition (the cache decides on exactly the
        labelled pair). Crowded: every text_a in one partition, so a query may hit
        another pair's question, and an unlabelled hit counts as wrong (a lower bound)."""
        cache = SemanticCache(encoder.dim, max_bytes=1 << 40, ttl_s=1e9, similarity_floor=floor, verifier=verifier if with_verifier else None, candidates=4)
        if crowded:
            for text, vec in zip(stored_texts, a_vectors, strict=True):
                cache.put("all", text, vec, {})
        else:
            for i, vec in enumerate(pair_a_vectors):
                cache.put(str(i), pairs[i][0], vec, {})
        out = []
        for i, (q, vec) in enumerate(zip(queries, b_vectors, strict=True)):
            hit = cache.lookup("all" if crowded else str(i), q, vec)
            out.append(hit.cached_text if hit else None)
        return out

    pair_a_vectors = a_vectors[[stored_texts.index(a) for a, _ in pairs]] if len(stored_texts) < 50_000 else a_vectors
    ours = _measure(simulate(verifier.similarity_floor, True, False), queries, positives, n_positive)
    baseline = _measure(simulate(args.baseline_threshold, False, False), queries, positives, n_positive)
    ours_crowded = _measure(simulate(verifier.similarity_floor, True, True), queries, positives, n_positive)
    baseline_crowded = _measure(simulate(args.baseline_threshold, False, True), queries, positives, n_positive)

    # precision/recall curve over the verifier threshold, pairwise
    cosines = np.einsum("ij,ij->i", pair_a_vectors, b_vectors)
    scores = np.where(cosines >= verifier.similarity_floor, verifier.score_many(pairs, cosines, pair_a_vectors, b_vectors), -1.0)
    curve = []
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        m = _measure([a if s >= t else None for (a, _), s in zip(pairs, scores, strict=True)], queries, positives, n_positive)
        curve.append({"threshold": t, "precision": m["precision"], "recall": m["recall"]})

    lookup = _index_latency(a_vectors, b_vectors, args.index_entries, rng, HnswIndex)
    result = {
        "bench": "cache",
        "data": args.data,
        "pairs_scored": len(pairs),
        "pairs_excluded_seen_in_training": excluded,
        "positives": n_positive,
        "threshold": {"cosine_floor": verifier.similarity_floor, "verifier": round(verifier.threshold, 4)},
        "verifier_stages": "embedding MLP + trees" if verifier.stage1 is not None else "trees on text features",
        "precision": ours["precision"],
        "recall": ours["recall"],
        "false_hit_rate": ours["false_hit_rate"],
        "baseline": {"name": f"MiniLM cosine >= {args.baseline_threshold}", "precision": baseline["precision"], "recall": baseline["recall"], "false_hit_rate": baseline["false_hit_rate"]},
        "crowded": {
            "note": "all text_a in one partition; hits on another pair's question count as wrong (lower bound)",
            "precision": ours_crowded["precision"], "recall": ours_crowded["recall"], "false_hit_rate": ours_crowded["false_hit_rate"],
            "baseline": {"precision": baseline_crowded["precision"], "recall": baseline_crowded["recall"]},
        },
        "pr_curve": curve,
        "index_entries": lookup["entries"],
        "lookup_p50_ms": lookup["p50_ms"],
        "lookup_p99_ms": lookup["p99_ms"],
        "lookup_cpu_p99_ms": lookup["cpu_p99_ms"],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "embed_p50_ms": round(float(np.median(one_by_one)) * 1e3, 2),
        "embed_batched_ms_per_text": round(embed_total_s / max(len(stored_texts) + len(queries), 1) * 1e3, 2),
    }
    _print_table(result)
    if args.plot:
        from thrifty.bench import plots
        plots.cache(result, args.plot)
    print(json.dumps(result))
    return 0


def _index_latency(a_vectors: np.ndarray, queries: np.ndarray, entries: int, rng: np.random.Generator, index_cls) -> dict:
    """Fill an HNSW index to `entries` (real vectors, then perturbed copies) and time searches."""
    dim = a_vectors.shape[1]
    fill = [a_vectors]
    have = len(a_vectors)
    while have < entries:
        take = min(entries - have, len(a_vectors))
        noisy = a_vectors[rng.integers(0, len(a_vectors), take)] + 0.35 * rng.standard_normal((take, dim)).astype(np.float32) / np.sqrt(dim)
        fill.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        have += take
    vectors = np.vstack(fill)[:entries].astype(np.float32)
    index = index_cls(dim)
    index.add_many(np.arange(len(vectors)), vectors)
    for q in queries[:50]:  # warm up
        index.search(q, 4)
    wall, cpu = [], []
    gc.disable()  # time the index, not the collector
    try:
        for q in queries[:2000]:
            started, started_cpu = time.perf_counter(), time.thread_time()
            index.search(q, 4)
            wall.append(time.perf_counter() - started)
            cpu.append(time.thread_time() - started_cpu)
    finally:
        gc.enable()
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {
        "entries": int(len(vectors)),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 4),
    }


def _print_table(r: dict) -> None:
    print(f"semantic cache bench: {r['data']}  ({r['pairs_scored']} pairs scored, {r['positives']} positive, {r['pairs_excluded_seen_in_training']} excluded as seen in training)")
    print(f"{'policy':<40}{'precision':>10}{'recall':>8}{'false_hit_rate':>16}")
    print(f"{'MiniLM + verifier (shipped threshold)':<40}{r['precision']!s:>10}{r['recall']!s:>8}{r['false_hit_rate']!s:>16}")
    b = r["baseline"]
    print(f"{b['name']:<40}{b['precision']!s:>10}{b['recall']!s:>8}{b['false_hit_rate']!s:>16}")
    c = r["crowded"]
    print(f"{'crowded cache, verifier (lower bound)':<40}{c['precision']!s:>10}{c['recall']!s:>8}{c['false_hit_rate']!s:>16}")
    print(f"{'crowded cache, baseline (lower bound)':<40}{c['baseline']['precision']!s:>10}{c['baseline']['recall']!s:>8}")
    print("verifier threshold -> precision/recall: " + ", ".join(f"{c['threshold']}: {c['precision']}/{c['recall']}" for c in r["pr_curve"]))
    print(f"lookup at {r['index_entries']} entries: p50 {r['lookup_p50_ms']} ms, p99 {r['lookup_p99_ms']} ms (cpu p99 {r['lookup_cpu_p99_ms']} ms, load {r['load_average_1m']});  embed one query (1 core) p50 {r['embed_p50_ms']} ms, batched {r['embed_batched_ms_per_text']} ms/text")


if __name__ == "__main__":
    sys.exit(main())
