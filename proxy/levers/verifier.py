"""Second-stage check for semantic-cache candidates: do two questions ask the same thing?

Contract: `Verifier.load()` reads the versioned `verifier_model.npz` (older or damaged files
are refused with a one-line "retrain it" error); `score_many(pairs, cosines, query_vectors,
candidate_vectors)` gives P(same question) per candidate in one call, and a candidate is a
hit when it reaches `threshold`; `for_encoder(name)` picks the text-only trees when the
cache embeds with another encoder than stage 1's. Why: cosine similarity cannot separate
"best laptop under $500" from "... under $1000" (both above 0.95); text features (numbers,
negations, entities, word order, rare words) plus a small network over the two vectors can,
evaluated here with numpy alone. Fitting (scikit-learn) lives in training/verifier_fit.py;
the design and its measurements are in docs/design/semantic-cache.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thrifty.proxy.levers.artifacts import named_load_errors
from thrifty.proxy.levers.router import sigmoid
from thrifty.proxy.levers.verifier_features import FEATURE_NAMES, DocumentFrequency, pair_features, same_words_or

ARTIFACT = Path(__file__).with_name("verifier_model.npz")
VERSION = 3

STAGE1_FEATURE = "embedding_mlp_probability"  # the stacked trees' extra (36th) feature
STAGE1_INPUTS = ("abs_diff", "product", "sum")  # what the stage-1 network sees of the two vectors


def pair_hash(a: str, b: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{a}\x00{b}".encode(), digest_size=8).digest(), "little")


@dataclass(slots=True)
class TreeEnsemble:
    """Boosted regression trees as padded arrays (tree, node); evaluated with numpy only.

    A sample goes left at a split node when x[feature] <= threshold; leaves point to
    themselves, so `depth` synchronous steps bring every tree to its leaf.
    """

    feature: np.ndarray  # (trees, nodes) int
    threshold: np.ndarray  # (trees, nodes) float
    left: np.ndarray  # (trees, nodes) int; a leaf's children are itself
    right: np.ndarray
    value: np.ndarray  # (trees, nodes) float: leaf contribution to the log-odds
    baseline: float
    depth: int
    # The same trees over flat node ids (tree * width + node), built once: what `log_odds` walks.
    _roots: np.ndarray = field(init=False, repr=False)
    _flat: tuple[np.ndarray, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        trees, width = self.feature.shape
        self._roots = np.arange(trees) * width
        shift = self._roots[:, None]
        self._flat = (self.feature.ravel(), self.threshold.ravel(), (self.left + shift).ravel(),
                      (self.right + shift).ravel(), self.value.ravel())

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        """x: (n, features) -> (n,) summed leaf values plus the baseline.

        Walks all trees at once over flat node ids: a handful of 1-D gathers per level,
        which is what keeps one lookup's scoring near 0.1 ms.
        """
        feature, threshold, left, right, value = self._flat
        trees, n = len(self._roots), x.shape[0]
        node = np.tile(self._roots, n)  # (n * trees,) every sample at every tree's root
        row_base = np.repeat(np.arange(n) * x.shape[1], trees)
        flat_x = x.ravel()
        for _ in range(self.depth):
            go_left = flat_x[row_base + feature[node]] <= threshold[node]
            node = np.where(go_left, left[node], right[node])
        return self.baseline + value[node].reshape(n, trees).sum(axis=1)


def vector_interaction(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """What stage 1 sees of two sentence vectors: [|u-v|, u*v, u+v] (symmetric in u and v;
    u+v, the shared topic, lifted out-of-fold precision at recall 0.20 from ~0.93 to 0.945).

    u: (d,) or (n, d), v: (n, d) -> (n, 3d)."""
    u, v = np.broadcast_arrays(np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32))
    return np.hstack([np.abs(u - v), u * v, u + v])


@dataclass(slots=True)
class PairMLP:
    """Stage 1: a ReLU network over `vector_interaction` -> P(same question), numpy forward.

    Fitted with scikit-learn's MLPClassifier at training time; `weights[i]` is (in, out)."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    @property
    def vector_dim(self) -> int:
        return self.weights[0].shape[0] // len(STAGE1_INPUTS)

    def probability(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        h = vector_interaction(u, v)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        return sigmoid((h @ self.weights[-1] + self.biases[-1])[:, 0].astype(np.float64))


@dataclass(slots=True)
class Verifier:
    """Pair features (+ the stage-1 probability when `stage1` is set) -> boosted trees.

    `text_only` is the same verifier without stage 1 (trees over the 35 text features,
    their own threshold), for caches that embed with another encoder than `embedder`:
    `for_encoder` picks it explicitly, a wrong-sized vector is refused."""

    trees: TreeEnsemble
    document_frequency: DocumentFrequency
    threshold: float  # on the probability that the pair is the same question
    similarity_floor: float
    stage1: PairMLP | None = None
    embedder: str | None = None  # the sentence encoder stage 1 was trained on
    text_only: "Verifier | None" = None
    trained_pairs: frozenset[int] = field(default_factory=frozenset)
    meta: dict = field(default_factory=dict)

    def for_encoder(self, name: str) -> "Verifier":
        """This verifier when the cache embeds with `name` (stage 1's encoder), else its text-only model."""
        if self.stage1 is None or name == self.embedder:
            return self
        if self.text_only is None:
            raise ValueError(f"verifier stage 1 was trained on {self.embedder} embeddings and has no text-only model for {name}")
        return self.text_only

    def score(self, query: str, candidate: str, cosine: float, query_vector: np.ndarray, candidate_vector: np.ndarray) -> float:
        return float(self.score_many([(query, candidate)], np.array([cosine]), query_vector, np.asarray(candidate_vector)[None, :])[0])

    def score_many(self, pairs: list[tuple[str, str]], cosines: np.ndarray, query_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
        """P(same question) per (query, candidate); query_vectors (d,) or (n, d), candidate_vectors (n, d)."""
        if not pairs:
            return np.zeros(0)
        x = np.stack([pair_features(a, b, float(c), self.document_frequency) for (a, b), c in zip(pairs, cosines, strict=True)])
        if self.stage1 is not None:
            dim = self.stage1.vector_dim
            if np.shape(query_vectors)[-1] != dim or np.shape(candidate_vectors) != (len(pairs), dim):
                raise ValueError(f"verifier stage 1 needs {self.embedder} vectors of dim {dim} for {len(pairs)} pairs; "
                                 f"got {np.shape(query_vectors)} and {np.shape(candidate_vectors)} (Verifier.for_encoder picks the text-only model)")
            x = np.hstack([x, self.stage1.probability(query_vectors, candidate_vectors)[:, None]])
        return same_words_or(pairs, sigmoid(self.trees.log_odds(x)))

    def save(self, path: Path | str = ARTIFACT) -> None:
        """One npz: the trees (stacked, and text-only if any), stage-1 weights, IDF table, seen-pair hashes."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"version": VERSION, "features": self._feature_names(), "similarity_floor": self.similarity_floor,
                "documents": self.document_frequency.documents, "embedder": self.embedder, "stage1_inputs": list(STAGE1_INPUTS), **self.meta}
        for prefix, model in (("", self), ("text_", self.text_only)):
            if model is not None:
                t = model.trees
                arrays.update({f"{prefix}feature": t.feature.astype(np.int16), f"{prefix}threshold": t.threshold,
                               f"{prefix}left": t.left.astype(np.int16), f"{prefix}right": t.right.astype(np.int16), f"{prefix}value": t.value})
                meta[f"{prefix}tree_baseline"], meta[f"{prefix}tree_depth"] = t.baseline, t.depth
                meta[f"{prefix}decision_threshold"] = model.threshold
        if self.stage1 is not None:
            meta["stage1_layers"] = len(self.stage1.weights)
            for i, (w, b) in enumerate(zip(self.stage1.weights, self.stage1.biases, strict=True)):
                arrays[f"stage1_w{i}"], arrays[f"stage1_b{i}"] = w.astype(np.float32), b.astype(np.float32)
        words = sorted(self.document_frequency.counts)
        np.savez_compressed(
            path,
            **arrays,
            df_words=np.array("\n".join(words)),
            df_counts=np.array([self.document_frequency.counts[w] for w in words], dtype=np.int32),
            trained_pairs=np.array(sorted(self.trained_pairs), dtype=np.uint64),
            meta=np.array(json.dumps(meta)),
        )

    def _feature_names(self) -> list[str]:
        return list(FEATURE_NAMES) + ([STAGE1_FEATURE] if self.stage1 is not None else [])

    @classmethod
    def load(cls, path: Path | str = ARTIFACT) -> "Verifier":
        """Version-3 artifacts only: older ones (no stage 1, other layout) are refused with a one-line error."""
        with named_load_errors(path, "verifier"):
            return cls._load(path)

    @classmethod
    def _load(cls, path: Path | str) -> "Verifier":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            stage1 = None
            if "stage1_layers" in meta:
                layers = int(meta.pop("stage1_layers"))
                stage1 = PairMLP([data[f"stage1_w{i}"] for i in range(layers)], [data[f"stage1_b{i}"] for i in range(layers)])
            expected = list(FEATURE_NAMES) + ([STAGE1_FEATURE] if stage1 is not None else [])
            if meta.get("version") != VERSION or meta.get("features") != expected or meta.get("stage1_inputs") != list(STAGE1_INPUTS):
                raise ValueError(f"{path}: verifier artifact version/features do not match this code (version {meta.get('version')}, want {VERSION}); retrain it")
            words = str(data["df_words"]).split("\n") if str(data["df_words"]) else []
            df = DocumentFrequency(dict(zip(words, data["df_counts"].tolist(), strict=True)), int(meta.pop("documents")))
            floor = float(meta.pop("similarity_floor"))
            trained = frozenset(int(h) for h in data["trained_pairs"])

            def trees(prefix: str) -> TreeEnsemble:
                return TreeEnsemble(
                    feature=data[f"{prefix}feature"].astype(np.int64), threshold=data[f"{prefix}threshold"], left=data[f"{prefix}left"].astype(np.int64),
                    right=data[f"{prefix}right"].astype(np.int64), value=data[f"{prefix}value"],
                    baseline=float(meta.pop(f"{prefix}tree_baseline")), depth=int(meta.pop(f"{prefix}tree_depth")),
                )

            text_only = None
            if "text_feature" in data:
                text_only = cls(trees=trees("text_"), document_frequency=df, threshold=float(meta.pop("text_decision_threshold")),
                                similarity_floor=floor, trained_pairs=trained)
            for key in ("version", "features", "stage1_inputs"):
                meta.pop(key)
            verifier = cls(trees=trees(""), document_frequency=df, threshold=float(meta.pop("decision_threshold")), similarity_floor=floor,
                           stage1=stage1, embedder=meta.pop("embedder"), text_only=text_only, trained_pairs=trained, meta=meta)
            if text_only is not None:
                text_only.meta = {**meta, "text_only": True}
            return verifier
