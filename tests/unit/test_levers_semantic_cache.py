"""Semantic cache: partition isolation, verifier gate, byte bound, index agreement."""

from __future__ import annotations

import numpy as np

from thrifty.proxy.levers.embedder import HashedNgramEncoder
from thrifty.proxy.levers.semantic_cache import AdaptiveIndex, HnswIndex, NumpyIndex, SemanticCache, partition_key

ENC = HashedNgramEncoder(128)


def _vec(text: str) -> np.ndarray:
    return ENC.encode([text])[0]


class RejectNumbersVerifier:
    """A rule verifier for this test: equal digit sets and cosine above 0.5."""

    threshold = 0.5

    def score_many(self, pairs: list[tuple[str, str]], cosines: np.ndarray, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
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


class RecordingVerifier:
    """Accepts everything and keeps what the cache handed it (to check the vectors it passes)."""

    threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, str]], np.ndarray, np.ndarray, np.ndarray]] = []

    def score_many(self, pairs, cosines, query_vectors, candidate_vectors) -> np.ndarray:
        self.calls.append((pairs, np.asarray(cosines), np.asarray(query_vectors), np.asarray(candidate_vectors)))
        return np.ones(len(pairs))


def test_cache_passes_query_and_stored_vectors_to_verifier() -> None:
    verifier = RecordingVerifier()
    cache = _cache(verifier=verifier)
    p = partition_key("t", {})
    stored = ["How do I bake bread?", "How do I bake sourdough bread?"]
    for text in stored:
        cache.put(p, text, _vec(text), {"answer": text})
    query = "how do i bake bread at home"
    assert cache.lookup(p, query, _vec(query)) is not None
    (pairs, cosines, qv, cv), = verifier.calls
    assert [q for q, _ in pairs] == [query] * len(pairs) and {c for _, c in pairs} <= set(stored)
    np.testing.assert_array_equal(qv, _vec(query))
    for (_, candidate), row, cos in zip(pairs, cv, cosines, strict=True):
        np.testing.assert_array_equal(row, _vec(candidate))  # the stored question's own vector
        assert abs(float(row @ _vec(query)) - cos) < 1e-5


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

    from thrifty.training.verifier_fit import trees_from_sklearn

    rng = np.random.default_rng(0)
    x = rng.random((1500, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + 0.3 * rng.random(1500) > 0.9).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15).fit(x, y)
    np.testing.assert_allclose(trees_from_sklearn(model).log_odds(x), model.decision_function(x), atol=1e-9)


def test_stage1_numpy_forward_matches_sklearn() -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from thrifty.proxy.levers.verifier import vector_interaction
    from thrifty.training.verifier_fit import mlp_from_sklearn

    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((400, 8)).astype(np.float32), rng.standard_normal((400, 8)).astype(np.float32)
    y = (np.abs(u - v).sum(axis=1) < 8.5).astype(int)
    for hidden in ((16,), (12, 6)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations are enough to compare forward passes
            model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=100, random_state=0).fit(vector_interaction(u, v), y)
        mlp = mlp_from_sklearn(model)
        np.testing.assert_allclose(mlp.probability(u, v), model.predict_proba(vector_interaction(u, v))[:, 1], atol=1e-5)
        np.testing.assert_allclose(mlp.probability(u[0], v[:3]), mlp.probability(np.repeat(u[:1], 3, axis=0), v[:3]), atol=1e-7)
        assert mlp.vector_dim == 8


def test_shipped_verifier_has_both_stages() -> None:
    from thrifty.proxy.levers.verifier import Verifier

    v = Verifier.load()
    assert v.stage1 is not None and v.embedder == "all-MiniLM-L6-v2" and v.stage1.vector_dim == 384
    assert v.for_encoder("all-MiniLM-L6-v2") is v and v.for_encoder("hashed-ngrams:64") is v.text_only
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pairs = [("How do I learn guitar fast?", "How can I learn to play the guitar quickly?")] * 3
    same_vector = v.score_many(pairs[:1], np.array([0.93]), vecs[0], vecs[:1])
    scores = v.score_many(pairs, np.full(3, 0.93), vecs[0], vecs)
    assert np.all((scores >= 0) & (scores <= 1)) and scores[0] == same_vector[0]
    assert len(set(np.round(scores, 12).tolist())) > 1  # the vectors, not only the texts, move the score
    try:
        v.score_many(pairs[:1], np.array([0.93]), np.zeros(64), np.zeros((1, 64)))
    except ValueError as exc:
        assert "for_encoder" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("wrong-sized vectors accepted")


def test_shipped_text_only_verifier_separates_rewording_from_changed_details() -> None:
    from thrifty.proxy.levers.verifier import Verifier

    v = Verifier.load().for_encoder("hashed-ngrams:64")
    assert v.stage1 is None
    none = np.zeros((1, 64))
    reworded = v.score("How can I learn to play the guitar quickly?", "How do I learn guitar fast?", 0.93, none[0], none[0])
    other_number = v.score("What is the best laptop under $500?", "What is the best laptop under $1000?", 0.96, none[0], none[0])
    swapped = v.score("How is Messi better than Ronaldo?", "How is Ronaldo better than Messi?", 0.99, none[0], none[0])
    assert other_number < v.threshold and swapped < v.threshold
    assert reworded > other_number and reworded > swapped
    assert v.score("How do I cook rice?", "how do I cook rice", 0.99, none[0], none[0]) == 1.0  # same words, same question


def _city_pairs(rng: np.random.Generator, dim: int = 12):
    """Reworded questions about one city (label 1) vs. another city (label 0); each city has its own vector direction."""
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Quito", "Seoul"]
    direction = {c: rng.standard_normal(dim) for c in cities}
    pairs, labels, a, b = [], [], [], []
    for i in range(900):
        city, other = rng.choice(cities, 2, replace=False)
        n = int(rng.integers(1, 90))
        noise = lambda: 0.3 * rng.standard_normal(dim)  # noqa: E731
        if i % 2:
            pairs.append((f"What is the population of {city} in {1900 + n}?", f"How many people lived in {city} in {1900 + n}?"))
            labels.append(1)
            a.append(direction[city] + noise())
            b.append(direction[city] + noise())
        else:
            pairs.append((f"What is the population of {city} in {1900 + n}?", f"What is the population of {other} in {1901 + n}?"))
            labels.append(0)
            a.append(direction[city] + noise())
            b.append(direction[other] + noise())
    unit = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return pairs, np.array(labels), unit(np.array(a)), unit(np.array(b))


SMALL_STAGE1 = {"hidden_layer_sizes": (32,), "max_iter": 200}  # a toy problem: a small, quick network


def test_train_verifier_round_trip_and_held_out(tmp_path) -> None:
    from thrifty.proxy.levers.verifier import Verifier, pair_hash
    from thrifty.training.verifier_fit import split_of, train_verifier

    pairs, labels, a, b = _city_pairs(np.random.default_rng(1))
    cosines = np.full(len(pairs), 0.9)
    v = train_verifier(pairs, cosines, labels, similarity_floor=0.8, precision_target=0.9, vectors=(a, b), embedder="toy", stage1_params=SMALL_STAGE1)
    assert v.stage1 is not None and v.text_only is not None and v.stage1.vector_dim == a.shape[1]
    held = [i for i, p in enumerate(pairs) if split_of(p) == "heldout"]
    held_out = [pairs[i] for i in held]
    assert held_out and not any(pair_hash(*p) in v.trained_pairs for p in held_out)
    path = tmp_path / "v.npz"
    v.save(path)
    again = Verifier.load(path)
    assert again.embedder == "toy" and again.for_encoder("other") is again.text_only
    scores = v.score_many(held_out, np.full(len(held), 0.9), a[held], b[held])
    np.testing.assert_allclose(again.score_many(held_out, np.full(len(held), 0.9), a[held], b[held]), scores)
    text_scores = v.text_only.score_many(held_out, np.full(len(held), 0.9), a[held], b[held])
    np.testing.assert_allclose(again.text_only.score_many(held_out, np.full(len(held), 0.9), a[held], b[held]), text_scores)
    truth = labels[held].astype(bool)
    assert ((scores >= v.threshold) == truth).mean() > 0.95  # the rule is learnable
    assert ((text_scores >= v.text_only.threshold) == truth).mean() > 0.95


def test_stage1_carries_what_the_text_cannot(tmp_path) -> None:
    """Same texts for both labels: only the vectors tell them apart, so only stage 1 can."""
    from thrifty.training.verifier_fit import split_of, train_verifier

    pairs, labels, a, b = _city_pairs(np.random.default_rng(2))
    pairs = [(f"question {i} about a city", f"question {i} about some city") for i in range(len(pairs))]
    v = train_verifier(pairs, np.full(len(pairs), 0.9), labels, similarity_floor=0.8, precision_target=0.9, vectors=(a, b), embedder="toy", stage1_params=SMALL_STAGE1)
    held = np.array([i for i, p in enumerate(pairs) if split_of(p) == "heldout"])
    scores = v.score_many([pairs[i] for i in held], np.full(len(held), 0.9), a[held], b[held])
    text_scores = v.text_only.score_many([pairs[i] for i in held], np.full(len(held), 0.9), a[held], b[held])
    accuracy = lambda s: ((s >= 0.5) == labels[held].astype(bool)).mean()  # noqa: E731
    assert accuracy(scores) > 0.9 > 0.7 > accuracy(text_scores)


def test_verifier_artifact_mismatch_is_one_line(tmp_path) -> None:
    from thrifty.proxy.levers.verifier import Verifier

    bad = tmp_path / "old.npz"
    np.savez(bad, meta=np.array('{"version": 1}'))
    try:
        Verifier.load(bad)
    except ValueError as exc:
        assert "retrain" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("old artifact accepted")
