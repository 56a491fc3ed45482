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

    def score_many(self, pairs: list[tuple[str, str]], cosines: np.ndarray) -> np.ndarray:
        digits = lambda s: sorted(c for c in s if c.isdigit())  # noqa: E731
        return np.array([float(c > 0.5 and digits(q) == digits(k)) for (q, k), c in zip(pairs, cosines, strict=True)])


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


def test_exported_trees_match_sklearn() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from thrifty.proxy.verifier import TreeEnsemble

    rng = np.random.default_rng(0)
    x = rng.random((1500, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + 0.3 * rng.random(1500) > 0.9).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15).fit(x, y)
    np.testing.assert_allclose(TreeEnsemble.from_sklearn(model).log_odds(x), model.decision_function(x), atol=1e-9)


def test_shipped_verifier_separates_rewording_from_changed_details() -> None:
    from thrifty.proxy.verifier import Verifier

    v = Verifier.load()
    reworded = v.score("How can I learn to play the guitar quickly?", "How do I learn guitar fast?", 0.93)
    other_number = v.score("What is the best laptop under $500?", "What is the best laptop under $1000?", 0.96)
    swapped = v.score("How is Messi better than Ronaldo?", "How is Ronaldo better than Messi?", 0.99)
    assert other_number < v.threshold and swapped < v.threshold
    assert reworded > other_number and reworded > swapped
    assert v.score("How do I cook rice?", "how do I cook rice", 0.99) == 1.0  # same words, same question
    many = v.score_many([("How do I learn guitar fast?", "How can I learn to play the guitar quickly?")], np.array([0.93]))
    assert 0.0 <= many[0] <= 1.0


def test_train_verifier_round_trip_and_held_out(tmp_path) -> None:
    from thrifty.proxy.verifier import Verifier, pair_hash, split_of, train_verifier

    rng = np.random.default_rng(1)
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Quito", "Seoul"]
    pairs, labels = [], []
    for i in range(900):
        city, other = rng.choice(cities, 2, replace=False)
        n = int(rng.integers(1, 90))
        if i % 2:
            pairs.append((f"What is the population of {city} in {1900 + n}?", f"How many people lived in {city} in {1900 + n}?"))
            labels.append(1)
        else:
            pairs.append((f"What is the population of {city} in {1900 + n}?", f"What is the population of {other} in {1901 + n}?"))
            labels.append(0)
    cosines = np.full(len(pairs), 0.9)
    v = train_verifier(pairs, cosines, np.array(labels), similarity_floor=0.8, precision_target=0.9)
    held_out = [p for p in pairs if split_of(p) == "heldout"]
    assert held_out and not any(pair_hash(*p) in v.trained_pairs for p in held_out)
    path = tmp_path / "v.npz"
    v.save(path)
    again = Verifier.load(path)
    scores = v.score_many(held_out, np.full(len(held_out), 0.9))
    np.testing.assert_allclose(again.score_many(held_out, np.full(len(held_out), 0.9)), scores)
    truth = np.array([labels[pairs.index(p)] for p in held_out])
    assert ((scores >= v.threshold) == truth.astype(bool)).mean() > 0.95  # the rule is learnable


def test_verifier_artifact_mismatch_is_one_line(tmp_path) -> None:
    from thrifty.proxy.verifier import Verifier

    bad = tmp_path / "old.npz"
    np.savez(bad, meta=np.array('{"version": 1}'))
    try:
        Verifier.load(bad)
    except ValueError as exc:
        assert "retrain" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("old artifact accepted")
