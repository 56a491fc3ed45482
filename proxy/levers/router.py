"""The learned router's serving half: load `router_model.npz`, score a request, pick a tier.

Contract: `RouterModel.load()` reads the versioned artifact (a one-line error names a bad
or stale file); `ease_score(vector, text)` is the chance the cheaper tier answers as well as
the strongest; `pick_tier(score, tiers, threshold)` walks the cheapest-first cascade
(`tier_thresholds`). Why linear heads over the cache's embedding: the vector is already
computed for the semantic cache, so routing costs a dot product. Fitting and calibration
live in the training package (training/router_fit.py, router_calibration.py, labels.py);
the design and its measurements are in docs/design/router.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thrifty.proxy.levers.artifacts import named_load_errors

ARTIFACT = Path(__file__).with_name("router_model.npz")
VERSION = 3
VIEW_CHARS = 1000  # MiniLM reads ~256 tokens from the start; few-shot prompts put the question last
CHEAP_FEATURES = ("log_chars", "log_words", "digit_share", "code_markers", "log_lines", "choices", "math_symbols", "question")

CLUSTER_SCALE = 5.0  # one-hot value: an L2 penalty 25x weaker than on an embedding weight

_CHOICE = re.compile(r"^\s*[A-E][.)]\s", re.MULTILINE)
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|;\s*$|\{|\}|\bfunction\b", re.MULTILINE)
_MATH = re.compile(r"[=+\-*/^<>]")


# Hard prompts (`hard_prompt`): kinds a small model answers badly whatever the ease score says.
_PROOF = re.compile(r"\b(prove|proofs?|theorem|lemma|show that|demonstrate that)\b", re.IGNORECASE)
_MATH_WORDS = re.compile(r"\b(solve|calculate|compute|integral|integrate|derivative|differentiate|equation|probability|how many|how much)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CODE_ASK = re.compile(
    r"```|\bdef \w+\(|\bclass \w+|\bfunction\b|\b(write|implement|debug|fix|refactor)\b[^.?!\n]{0,40}\b(code|program|function|script|class|method|query|algorithm)\b",
    re.IGNORECASE,
)


def hard_prompt(text: str) -> str | None:
    """The kind of a prompt that should go to the largest tier (`proof`, `math`, `code`), or None.

    A cheap, documented rule in front of the learned score (config `router.hard_prompts`):
    proofs, multi-step maths (a maths verb with at least two numbers, or an equation-heavy
    prompt) and code. Why: the ease head is fitted on benchmark tasks, and on the demo a
    twin-primes proof went to the 135M model and came back as gibberish. Reads the router's
    view (the prompt's tail), so a long few-shot prefix does not decide it."""
    view = router_view(text)
    if _PROOF.search(view):
        return "proof"
    if _CODE_ASK.search(view):
        return "code"
    numbers = len(_NUMBER.findall(view))
    if (_MATH_WORDS.search(view) and numbers >= 2) or (numbers >= 3 and len(_MATH.findall(view)) >= 3 and "=" in view):
        return "math"
    return None


def prompt_hash(prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")


def router_view(text: str) -> str:
    """The part of a prompt the router embeds: its last VIEW_CHARS characters.

    Benchmark prompts (RouterBench) carry a few-shot prefix identical across a task; the
    encoder truncates from the start, so embedding the whole prompt gives one vector per
    task and no per-prompt signal. Short prompts (most chat traffic) are embedded whole."""
    return text if len(text) <= VIEW_CHARS else text[-VIEW_CHARS:]


def cheap_features(text: str) -> np.ndarray:
    chars = max(len(text), 1)
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(len(text.split())),
            sum(c.isdigit() for c in text) / chars,
            min(len(_CODE.findall(text)), 10) / 10,
            math.log1p(text.count("\n")),
            min(len(_CHOICE.findall(text)), 6) / 6,
            min(len(_MATH.findall(text)), 50) / 50,
            float("?" in text),
        ],
        dtype=np.float32,
    )


# ---------------------------------------------------------------- the model


def topic_features(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """One-hot nearest centroid, scaled by CLUSTER_SCALE; no columns without centroids."""
    vectors = np.atleast_2d(vectors)
    out = np.zeros((len(vectors), len(centroids)))
    if len(centroids):
        out[np.arange(len(vectors)), np.argmax(vectors.astype(np.float32) @ centroids.T, axis=1)] = CLUSTER_SCALE
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(z, -30, 30)))


@dataclass(slots=True)
class RouterModel:
    """Linear heads over [embedding, standardised cheap features]."""

    embedder: str
    dim: int
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    heads: dict[str, np.ndarray]  # model name -> [w..., b]: P(model answers correctly)
    ease: np.ndarray  # [w..., b]: P(the cheaper tier answers as well as the strongest)
    threshold: float  # calibrated default for serving
    calibration: np.ndarray  # (k, 3): out-of-fold ease, weak score, strong score on training rows
    trained_prompts: np.ndarray  # uint64 prompt hashes
    centroids: np.ndarray  # (k, dim) topic clusters the per-model heads see; k may be 0
    mean_costs: dict[str, float] = field(default_factory=dict)  # dollars per call seen in training
    meta: dict = field(default_factory=dict)

    def features(self, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        cheap = np.stack([cheap_features(t) for t in texts]) if texts else np.zeros((0, len(CHEAP_FEATURES)))
        cheap = (cheap - self.feature_mean) / self.feature_scale
        return np.hstack([np.atleast_2d(vectors).astype(np.float64), cheap])

    def ease_scores(self, vectors: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        x = self.features(vectors, texts)
        return sigmoid(x @ self.ease[:-1] + self.ease[-1])

    def ease_score(self, vector: np.ndarray, text: str) -> float:
        return float(self.ease_scores(vector[None, :], [text])[0])

    def correctness(self, vectors: np.ndarray, texts: Sequence[str], models: Sequence[str]) -> np.ndarray:
        x = np.hstack([self.features(vectors, texts), topic_features(vectors, self.centroids)])
        return np.stack([sigmoid(x @ self.heads[m][:-1] + self.heads[m][-1]) for m in models], axis=1)

    def margin_for(self, n_models: int) -> float:
        """The cross-validated margin for a policy over `n_models` (0 for older artifacts)."""
        margins = self.meta.get("operating_margin", {})
        return float(margins.get("two_models" if n_models <= 2 else "more_models", 0.0)) if isinstance(margins, dict) else 0.0

    def ease_margin(self) -> float:
        """The margin for a threshold set by `threshold_for_quality` on this artifact's
        calibration: the two-model margin cross-validated for heads over the ease head's own
        features (no topic clusters), the nearest measured proxy for its error."""
        return float(self.meta.get("ease_margin", 0.0))

    def trained_on(self, prompts: Sequence[str]) -> np.ndarray:
        hashes = np.array([prompt_hash(p) for p in prompts], dtype=np.uint64)
        return np.isin(hashes, self.trained_prompts)

    def save(self, path: Path = ARTIFACT) -> None:
        meta = {"version": VERSION, "embedder": self.embedder, "dim": self.dim, "cheap_features": list(CHEAP_FEATURES), "threshold": self.threshold, "head_names": list(self.heads), "mean_costs": self.mean_costs, **self.meta}
        np.savez_compressed(
            path,
            meta=np.array(json.dumps(meta)),
            feature_mean=self.feature_mean,
            feature_scale=self.feature_scale,
            heads=np.stack([self.heads[m] for m in self.heads]).astype(np.float32),
            ease=self.ease,
            calibration=self.calibration.astype(np.float32),
            trained_prompts=self.trained_prompts,
            centroids=self.centroids,
        )

    @classmethod
    def load(cls, path: str | Path = ARTIFACT) -> "RouterModel":
        with named_load_errors(path, "router"):
            return cls._load(path)

    @classmethod
    def _load(cls, path: str | Path) -> "RouterModel":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("version") != VERSION or meta.get("cheap_features") != list(CHEAP_FEATURES):
                raise ValueError(f"{path}: router artifact version {meta.get('version')} does not match this code ({VERSION}); retrain it")
            names = meta.pop("head_names")
            return cls(
                embedder=meta.pop("embedder"),
                dim=int(meta.pop("dim")),
                feature_mean=data["feature_mean"],
                feature_scale=data["feature_scale"],
                heads={m: data["heads"][i].astype(np.float64) for i, m in enumerate(names)},
                ease=data["ease"],
                threshold=float(meta.pop("threshold")),
                calibration=data["calibration"].astype(np.float64),
                trained_prompts=data["trained_prompts"],
                centroids=data["centroids"],
                mean_costs=meta.pop("mean_costs"),
                meta=meta,
            )


# ---------------------------------------------------------------- serving decision


def tier_thresholds(threshold: float, n_tiers: int) -> list[float]:
    """Cascade: tier i (cheapest first) answers when score >= thresholds[i]; the last gets 0."""
    if n_tiers <= 1:
        return [0.0]
    cheaper = n_tiers - 1
    return [threshold * (1 - i / cheaper) if cheaper > 1 else threshold for i in range(cheaper)] + [0.0]


def pick_tier(score: float, tiers: Sequence[str], threshold: float) -> str:
    for tier, t in zip(tiers, tier_thresholds(threshold, len(tiers)), strict=True):
        if score >= t:
            return tier
    return tiers[-1]
