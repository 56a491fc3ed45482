"""Semantic cache: partition isolation, verifier gate, byte bound, index agreement."""

from __future__ import annotations

import numpy as np

from thrifty.proxy.embedder import HashedNgramEncoder
from thrifty.proxy.semantic_cache import AdaptiveIndex, HnswIndex, NumpyIndex, SemanticCache, partition_key

ENC = HashedNgramEncoder(128)


def _vec(text: str) -> np.ndarray:
    return ENC.encode([text])[0]


class RejectNumbersVerifier:
    """A rule verifier for this test: equal digit sets and cosine above 0.5."""

    threshold = 0.5

    def score(self, query: str, candidate: str, cosine: float) -> float:
        digits = lambda s: sorted(c for c in s if c.isdigit())  # noqa: E731
        return float(cosine > 0.5 and digits(query) == digits(candidate))


def _cache(**kw) -> SemanticCache:
    return SemanticCache(ENC.dim, max_bytes=kw.pop("max_bytes", 1 << 20), ttl_s=60, similarity_floor=0.6, verifier=kw.pop("verifier", None), **kw)


def test_hit_within_partition_only() -> None:
    cache = _cache()
    p1, p2 = partition_key("tenant-a", {"system": "x"}), partition_key("tenant-b", {"system": "x"})
    q = "How do I reset my password?"
    cache.put(p1, q, _vec(q), {"answer": 1})
    hit = cache.lookup(p1, "How do I reset my password", _vec("How do I reset my password"))
    assert hit is not None and hit.body == {"answer": 1}
    assert cache.lookup(p2, q, _vec(q)) is None
    assert cache.lookup(partition_key("tenant-a", {"system": "y"}), q, _vec(q)) is None


def test_verifier_rejects_close_but_different() -> None:
    cache = _cache(verifier=RejectNumbersVerifier())
    p = partition_key("t", {})
    q = "best laptop under 500 dollars"
    cache.put(p, q, _vec(q), {"answer": "500"})
    assert cache.lookup(p, "best laptop under 900 dollars", _vec("best laptop under 900 dollars")) is None
    assert cache.lookup(p, "best laptops under 500 dollars", _vec("best laptops under 500 dollars")) is not None


def test_bytes_bound_evicts_oldest() -> None:
    cache = _cache(max_bytes=6000)
    p = partition_key("t", {})
    for i in range(40):
        cache.put(p, f"question number {i}", _vec(f"question number {i}"), {"answer": "x" * 200})
    assert cache.bytes <= 6000 and 0 < len(cache) < 40
    hit = cache.lookup(p, "question number 0", _vec("question number 0"))
    assert hit is None or hit.cached_text != "question number 0"  # evicted; a neighbour may answer


def test_indexes_agree_on_nearest() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact, hnsw, adaptive = NumpyIndex(32), HnswIndex(32), AdaptiveIndex(32, hnsw_from=1000)
    for i, v in enumerate(x):
        exact.add(i, v)
        hnsw.add(i, v)
        adaptive.add(i, v)
    for i in (0, 17, 2999):
        q = x[i] + 0.01 * rng.standard_normal(32).astype(np.float32)
        assert exact.search(q, 1)[0][0] == i == hnsw.search(q, 1)[0][0] == adaptive.search(q, 1)[0][0]
    exact.remove(17)
    assert 17 not in exact.search(x[17], 3)[0]
    assert len(exact) == 2999
