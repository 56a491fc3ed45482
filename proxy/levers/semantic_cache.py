"""Semantic cache: a reworded question gets the answer stored for the original.

Entries live in partitions keyed by a hash of tenant + context (system prompt, earlier
turns, tools, generation parameters, model alias), so a tenant never sees another
tenant's answers and one conversation never receives another's: the nearest-neighbour
search only ever runs inside one partition. A lookup takes the few nearest stored
questions above a cosine floor and lets a second-stage `Verifier` decide (from both
texts and both vectors: each entry keeps its vector), because cosine alone cannot tell
"how to lose weight" from "how to gain weight".

Indexing: exact numpy search while a partition is small, usearch HNSW (int8, cosine)
once it grows past `HNSW_FROM` entries, where HNSW becomes the faster of the two
(measurements: docs/design/semantic-cache.md).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from thrifty.proxy.levers.exact_cache import canonical_json

HNSW_FROM = 2048  # partition size where HNSW beats exact numpy search (docs/design/semantic-cache.md)
_VECTOR_OVERHEAD = 64  # index bookkeeping per entry, bytes (approximate)


class PairVerifier(Protocol):
    threshold: float

    def score_many(self, pairs: list[tuple[str, str]], cosines: np.ndarray, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
        """For each (query, candidate): the chance that the two ask the same thing (one call
        for all of a lookup's candidates, so a model's fixed cost is paid once).
        query_vectors: the query's embedding, (d,) or one row per pair; candidate_vectors:
        (pairs, d), the stored questions' embeddings (a verifier may look at both)."""


class VectorIndex(Protocol):
    def add(self, key: int, vector: np.ndarray) -> None: ...
    def remove(self, key: int) -> None: ...
    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (keys, cosine similarities), best first."""
    def __len__(self) -> int: ...


class NumpyIndex:
    """Exact cosine search over a growable matrix; fastest for small partitions."""

    def __init__(self, dim: int) -> None:
        self._vectors = np.zeros((16, dim), dtype=np.float32)
        self._keys = np.zeros(16, dtype=np.int64)
        self._slot: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, key: int, vector: np.ndarray) -> None:
        n = len(self._slot)
        if n == len(self._keys):
            self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
            self._keys = np.concatenate([self._keys, np.zeros_like(self._keys)])
        self._vectors[n] = vector
        self._keys[n] = key
        self._slot[key] = n

    def remove(self, key: int) -> None:
        slot = self._slot.pop(key)
        last = len(self._slot)
        if slot != last:  # move the last row into the hole
            self._vectors[slot] = self._vectors[last]
            self._keys[slot] = self._keys[last]
            self._slot[int(self._keys[slot])] = slot

    def add_many(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        n, m = len(self._slot), len(keys)
        if n + m > len(self._keys):
            size = max(2 * len(self._keys), n + m)
            self._vectors = np.concatenate([self._vectors[:n], np.zeros((size - n, self._vectors.shape[1]), np.float32)])
            self._keys = np.concatenate([self._keys[:n], np.zeros(size - n, np.int64)])
        self._vectors[n:n + m] = vectors
        self._keys[n:n + m] = keys
        self._slot.update(zip(keys.tolist(), range(n, n + m)))

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._slot)
        if n == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        sims = self._vectors[:n] @ vector
        k = min(k, n)
        top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-sims[top])]
        return self._keys[top].copy(), sims[top]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._slot)
        return self._keys[:n], self._vectors[:n]


class HnswIndex:
    """usearch HNSW, cosine metric, int8 storage (vectors are unit-normalised)."""

    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self._index = Index(ndim=dim, metric="cos", dtype="i8", connectivity=16, expansion_add=32, expansion_search=48)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, key: int, vector: np.ndarray) -> None:
        self._index.add(key, vector)

    def add_many(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add(keys, vectors)

    def remove(self, key: int) -> None:
        self._index.remove(key)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._index) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        matches = self._index.search(vector, k)
        return np.asarray(matches.keys, dtype=np.int64), 1.0 - np.asarray(matches.distances, dtype=np.float32)


class AdaptiveIndex:
    """Exact numpy search while small; moves itself to HNSW past `hnsw_from` entries."""

    def __init__(self, dim: int, hnsw_from: int = HNSW_FROM) -> None:
        self._dim = dim
        self._hnsw_from = hnsw_from
        self._inner: NumpyIndex | HnswIndex = NumpyIndex(dim)

    def __len__(self) -> int:
        return len(self._inner)

    def add(self, key: int, vector: np.ndarray) -> None:
        self._inner.add(key, vector)
        if isinstance(self._inner, NumpyIndex) and len(self._inner) >= self._hnsw_from:
            keys, vectors = self._inner.vectors()
            hnsw = HnswIndex(self._dim)
            hnsw.add_many(keys.copy(), vectors.copy())
            self._inner = hnsw

    def add_many(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Bulk add (a mirror rebuild): goes straight to HNSW when the result is large."""
        if isinstance(self._inner, NumpyIndex) and len(self._inner) + len(keys) >= self._hnsw_from:
            old_keys, old_vectors = self._inner.vectors()
            hnsw = HnswIndex(self._dim)
            hnsw.add_many(np.concatenate([old_keys, keys]).astype(np.int64), np.vstack([old_vectors, vectors]).astype(np.float32))
            self._inner = hnsw
        elif isinstance(self._inner, HnswIndex):
            self._inner.add_many(keys, vectors)
        else:
            self._inner.add_many(keys, vectors)

    def remove(self, key: int) -> None:
        self._inner.remove(key)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._inner.search(vector, k)


@dataclass(slots=True)
class SemanticHit:
    body: dict[str, Any]
    similarity: float
    verifier_score: float
    cached_text: str
    key: int = -1  # the entry's local key (a shared mirror tells its own entries from other pods')


@dataclass(slots=True)
class _Entry:
    partition: str
    text: str
    vector: np.ndarray  # kept for the verifier (already counted in `size`)
    body: dict[str, Any] | bytes  # bytes: an answer kept compressed (a shared-cache mirror's entry)
    size: int
    expires_at: float


def partition_key(tenant: str, context: dict[str, Any]) -> str:
    """Tenant + everything but the last question: the scope a hit may come from."""
    return hashlib.sha256(canonical_json({"tenant": tenant, "context": context}).encode()).hexdigest()


class SemanticCache:
    """Nearest neighbours within a partition, verified, bounded by bytes (LRU) and TTL."""

    def __init__(
        self,
        dim: int,
        *,
        max_bytes: int,
        ttl_s: float,
        similarity_floor: float,
        verifier: PairVerifier | None,
        candidates: int = 4,
        index_factory: Callable[[int], VectorIndex] = AdaptiveIndex,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dim = dim
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.similarity_floor = similarity_floor
        self.verifier = verifier
        self.candidates = candidates
        self._index_factory = index_factory
        self._clock = clock
        self._partitions: dict[str, VectorIndex] = {}
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, partition: str, text: str, vector: np.ndarray) -> SemanticHit | None:
        index = self._partitions.get(partition)
        if index is None or len(index) == 0:
            return None
        keys, sims = index.search(vector, self.candidates)
        now = self._clock()
        found: list[tuple[int, float, _Entry]] = []
        for key, sim in zip(keys.tolist(), sims.tolist(), strict=True):
            if sim < self.similarity_floor:
                continue
            entry = self._entries.get(key)
            if entry is None or entry.partition != partition:  # never leave the partition
                continue
            if entry.expires_at <= now:
                self._drop(key)
                continue
            found.append((key, sim, entry))
        if not found:
            return None
        if self.verifier is not None:
            scores = self.verifier.score_many([(text, e.text) for _, _, e in found], np.array([s for _, s, _ in found]),
                                              vector, np.stack([e.vector for _, _, e in found])).tolist()
            threshold = self.verifier.threshold
        else:
            scores, threshold = [s for _, s, _ in found], -np.inf
        score, (key, sim, entry) = max(zip(scores, found, strict=True), key=lambda pair: pair[0])
        if score < threshold:
            return None
        self._entries.move_to_end(key)
        return SemanticHit(body=entry.body, similarity=sim, verifier_score=score, cached_text=entry.text, key=key)

    def put(self, partition: str, text: str, vector: np.ndarray, body: dict[str, Any]) -> bool:
        return self.insert(partition, text, vector, body) is not None

    def insert(self, partition: str, text: str, vector: np.ndarray, body: dict[str, Any], ttl_s: float | None = None) -> int | None:
        """`put` that returns the entry's local key (None: larger than the whole budget);
        `ttl_s` overrides the configured TTL (a mirrored entry keeps its remaining life)."""
        return self.insert_many([(partition, text, vector, body, ttl_s)])[0]

    def insert_many(self, items: list[tuple[str, str, np.ndarray, dict[str, Any] | bytes, float | None]]) -> list[int | None]:
        """Bulk insert, one index call per partition (what makes a mirror rebuild fast)."""
        now = self._clock()
        out: list[int | None] = []
        grouped: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for partition, text, vector, body, ttl_s in items:
            # bytes: an answer kept compressed (a shared-cache mirror inflates it on a hit)
            body_size = len(body) if isinstance(body, bytes) else len(canonical_json(body).encode())
            size = body_size + len(text.encode()) + vector.nbytes + _VECTOR_OVERHEAD
            if size > self.max_bytes:
                out.append(None)
                continue
            key = self._next_key
            self._next_key += 1
            vector = np.array(vector, dtype=np.float32)  # our own copy
            self._entries[key] = _Entry(partition=partition, text=text, vector=vector, body=body, size=size,
                                        expires_at=now + (self.ttl_s if ttl_s is None else ttl_s))
            self.bytes += size
            keys, vectors = grouped.setdefault(partition, ([], []))
            keys.append(key)
            vectors.append(vector)
            out.append(key)
        for partition, (keys, vectors) in grouped.items():
            index = self._partitions.get(partition)
            if index is None:
                index = self._partitions[partition] = self._index_factory(self.dim)
            if len(keys) > 1 and hasattr(index, "add_many"):
                index.add_many(np.array(keys, dtype=np.int64), np.stack(vectors))
            else:
                for key, vector in zip(keys, vectors, strict=True):
                    index.add(key, vector)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return [k if k is not None and k in self._entries else None for k in out]

    def remove(self, key: int) -> bool:
        """Drop one entry by local key; False when it is already gone."""
        if key not in self._entries:
            return False
        self._drop(key)
        return True

    def __contains__(self, key: int) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._partitions.clear()
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        index = self._partitions[entry.partition]
        index.remove(key)
        if len(index) == 0:
            del self._partitions[entry.partition]
