"""The learned router: which tier answers a request.

A linear model over the request's sentence embedding (the same vector the semantic
cache uses) plus a few cheap prompt features predicts, per known model, the chance it
answers correctly, and — the score used when serving — the chance that the cheaper
tier answers as well as the strongest one ("ease"). It is trained on real labelled
data (RouteLLM MMLU: Mixtral vs GPT-4 correctness; RouterBench: 11 models with
scores and dollar costs) by `thrifty router train`, which writes the versioned
artifact `router_model.npz` shipped in the package.

Tiers are ordered cheapest first. With a threshold t, the cheapest tier answers when
ease >= t; with more tiers the thresholds cascade linearly from t down to 0 (tier i
of n-1 cheaper tiers answers when ease >= t * (1 - i/(n-1))), so a lower score walks
up one tier at a time and the strongest tier takes whatever is left.

The per-model heads also see which of k topic clusters (spherical k-means over the
training embeddings) a prompt falls in, one-hot and penalised 25x less than an embedding
weight: a model's accuracy differs mostly by task (GPT-4: 0.95 on arc, 0.70 on mbpp), and
through shrunk embedding weights alone the heads pulled every task towards the pooled
mean (MMLU's 7,000 rows), mispricing GPT-4 on mbpp by +0.12. `thrifty router train`
picks k from CLUSTER_CHOICES by out-of-fold savings (0 keeps the plain heads). The ease
head, which serving uses, keeps the plain features.

Nothing in serving uses labels: the threshold comes from the artifact's calibration
(out-of-fold scores on its training rows) or from `thrifty router calibrate`. Over
known models with prices, `choose_policy` picks a label-free operating point with a
safety margin cross-validated at training time (`meta["margin_cv"]`).

Regenerate the shipped artifact (deterministic given the data):
  thrifty router train --data ../shared/data/routing/routellm_mmlu.csv \
    ../shared/data/routing/routerbench_{arc_challenge,mbpp,winogrande}_train.csv
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thrifty.proxy.levers.artifacts import named_load_errors

ARTIFACT = Path(__file__).with_name("router_model.npz")
VERSION = 3
VIEW_CHARS = 1000  # MiniLM reads ~256 tokens from the start; few-shot prompts put the question last
TRAIN_BUCKETS = 50  # prompts whose hash % 100 < 50 train the router; the rest stay held out
CHEAP_FEATURES = ("log_chars", "log_words", "digit_share", "code_markers", "log_lines", "choices", "math_symbols", "question")

CLUSTER_CHOICES = (0, 4, 8, 16)  # topic clusters the heads may use; training cross-validates the count
CLUSTER_SCALE = 5.0  # one-hot value: an L2 penalty 25x weaker than on an embedding weight

# Per-call prices for files without `|total_cost` columns (RouteLLM's paper prices, $/1M
# tokens, equal tokens assumed): the margin cross-validation and `thrifty bench routing` use them.
REFERENCE_PRICES = {"gpt-4-1106-preview": 24.7, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.24}

_CHOICE = re.compile(r"^\s*[A-E][.)]\s", re.MULTILINE)
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|;\s*$|\{|\}|\bfunction\b", re.MULTILINE)
_MATH = re.compile(r"[=+\-*/^<>]")


def prompt_hash(prompt: str) -> int:
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")


def router_view(text: str) -> str:
    """The part of a prompt the router embeds: its last VIEW_CHARS characters.

    Benchmark prompts (RouterBench) carry a few-shot prefix identical across a task; the
    encoder truncates from the start, so embedding the whole prompt gives one vector per
    task and no per-prompt signal. Short prompts (most chat traffic) are embedded whole."""
    return text if len(text) <= VIEW_CHARS else text[-VIEW_CHARS:]


def is_training_prompt(prompt: str) -> bool:
    return prompt_hash(prompt) % 100 < TRAIN_BUCKETS


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


# ---------------------------------------------------------------- labelled data files


@dataclass(slots=True)
class LabelledSet:
    """Prompts with a score per model (NaN = missing) and, where known, dollars per call."""

    source: str
    prompts: list[str]
    models: list[str]
    scores: np.ndarray  # (n, m) in [0, 1]
    costs: np.ndarray | None  # (n, m) dollars, or None (RouteLLM format)
    groups: list[str] = field(default_factory=list)  # subject / eval_name

    def subset(self, rows: np.ndarray) -> "LabelledSet":
        return LabelledSet(
            source=self.source,
            prompts=[self.prompts[i] for i in rows],
            models=self.models,
            scores=self.scores[rows],
            costs=None if self.costs is None else self.costs[rows],
            groups=[self.groups[i] for i in rows] if self.groups else [],
        )


class DataFormatError(ValueError):
    """A routing data file in neither the RouteLLM nor the RouterBench format."""


_NON_MODEL = {"", "sample_id", "prompt", "eval_name", "subject", "oracle_model_to_route_to", "index", "unnamed: 0"}


def _score(value: str) -> float:
    value = value.strip()
    if value.lower() in ("true", "false"):
        return 1.0 if value.lower() == "true" else 0.0
    if value == "":
        return math.nan
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise DataFormatError(f"score {value!r} is outside [0, 1]")
    return number


def load_labelled(path: str | Path) -> LabelledSet:
    """Read a RouteLLM (`prompt,<weak>,<strong>`) or RouterBench (`|total_cost`) CSV."""
    path = Path(path)
    csv.field_size_limit(1 << 30)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise DataFormatError(f"{path}: cannot read as CSV: {exc}") from None
    if "prompt" not in header:
        raise DataFormatError(f"{path}: no 'prompt' column")
    p = header.index("prompt")
    cost_cols = {h.split("|")[0]: i for i, h in enumerate(header) if h.endswith("|total_cost")}
    models = [h for h in header if "|" not in h and h.strip().lower() not in _NON_MODEL]
    if len(models) < 2:
        raise DataFormatError(f"{path}: needs at least two model score columns, found {models}")
    model_cols = [header.index(m) for m in models]
    group_col = header.index("eval_name") if "eval_name" in header else header.index("subject") if "subject" in header else None
    prompts, scores, costs, groups = [], [], [], []
    try:
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise DataFormatError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            prompts.append(row[p])
            scores.append([_score(row[i]) for i in model_cols])
            if cost_cols:
                costs.append([float(row[cost_cols[m]]) if m in cost_cols and row[cost_cols[m]].strip() else math.nan for m in models])
            if group_col is not None:
                groups.append(row[group_col])
    except ValueError as exc:
        raise DataFormatError(f"{path}: {exc}") from None
    if not prompts:
        raise DataFormatError(f"{path}: no rows")
    return LabelledSet(
        source=path.name,
        prompts=prompts,
        models=models,
        scores=np.array(scores, dtype=np.float64),
        costs=np.array(costs, dtype=np.float64) if cost_cols else None,
        groups=groups,
    )


def strongest(data: LabelledSet) -> int:
    return int(np.nanargmax(np.nanmean(data.scores, axis=0)))


def default_weak(data: LabelledSet, mean_costs: np.ndarray | None) -> int:
    """The pair the ease score learns from: the best model costing <= 20% of the strongest."""
    s = strongest(data)
    means = np.nanmean(data.scores, axis=0)
    if mean_costs is None or len(data.models) == 2:
        return min((i for i in range(len(data.models)) if i != s), key=lambda i: -means[i])
    cheap = [i for i in range(len(data.models)) if i != s and mean_costs[i] <= 0.2 * mean_costs[s]]
    pool = cheap or [i for i in range(len(data.models)) if i != s]
    return max(pool, key=lambda i: means[i])


# ---------------------------------------------------------------- the model


def topic_centroids(vectors: np.ndarray, k: int, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """Spherical k-means (unit vectors, cosine): (k, dim) unit centroids; (0, dim) for k = 0."""
    unit = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)
    if k == 0:
        return np.zeros((0, unit.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = unit[rng.choice(len(unit), k, replace=False)]
    for _ in range(iterations):
        nearest = np.argmax(unit @ centroids.T, axis=1)
        for c in range(k):
            members = unit[nearest == c]
            if len(members):
                centroids[c] = members.mean(axis=0)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    return centroids.astype(np.float32)


def topic_features(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """One-hot nearest centroid, scaled by CLUSTER_SCALE; no columns without centroids."""
    vectors = np.atleast_2d(vectors)
    out = np.zeros((len(vectors), len(centroids)))
    if len(centroids):
        out[np.arange(len(vectors)), np.argmax(vectors.astype(np.float32) @ centroids.T, axis=1)] = CLUSTER_SCALE
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """L2-regularised logistic regression (Newton); y may be fractional. Returns [w..., b]."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p) + 1e-6)[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


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


# ---------------------------------------------------------------- training and calibration


def _mean_costs(data: LabelledSet) -> np.ndarray | None:
    return None if data.costs is None else np.nanmean(data.costs, axis=0)


def train_router(
    sets: Sequence[LabelledSet],
    embed: Callable[[list[str]], np.ndarray],
    *,
    embedder_name: str,
    l2: float = 30.0,
    quality_target: float = 0.95,
) -> RouterModel:
    """Fit per-model heads and the ease head on each file's training half (prompt-hash split)."""
    train = [s.subset(np.array([i for i, p in enumerate(s.prompts) if is_training_prompt(p)], dtype=int)) for s in sets]
    train = [t for t in train if t.prompts]
    all_prompts = [p for t in train for p in t.prompts]
    vectors = embed([router_view(p) for p in all_prompts])
    cheap = np.stack([cheap_features(p) for p in all_prompts])
    mean, scale = cheap.mean(axis=0), cheap.std(axis=0) + 1e-6
    x = np.hstack([vectors.astype(np.float64), (cheap - mean) / scale])
    offsets = np.cumsum([0] + [len(t.prompts) for t in train])

    folds = [np.array([prompt_hash(p) % 2 for p in t.prompts]) for t in train]
    centroids, margin, margin_cv, cluster_cv, plain_margin = _choose_topic_clusters(train, x, vectors, offsets, folds, l2, quality_target)
    heads = _fit_heads(train, np.hstack([x, topic_features(vectors, centroids)]), offsets, l2)

    ease_x, ease_y, weak_q, strong_q, fold = [], [], [], [], []
    costs: dict[str, list[float]] = {}
    for t, start in zip(train, offsets, strict=False):
        mc = _mean_costs(t)
        if mc is not None:
            for m, c in zip(t.models, mc, strict=True):
                costs.setdefault(m, []).append(float(c))
        s, w = strongest(t), default_weak(t, mc)
        ok = ~np.isnan(t.scores[:, s]) & ~np.isnan(t.scores[:, w])
        ease_x.append(x[start : start + len(t.prompts)][ok])
        ease_y.append((t.scores[ok, w] >= t.scores[ok, s]).astype(float))
        weak_q.append(t.scores[ok, w])
        strong_q.append(t.scores[ok, s])
        fold.append(np.array([prompt_hash(p) % 2 for p, good in zip(t.prompts, ok, strict=True) if good]))
    ex, ey, fold_all = np.vstack(ease_x), np.concatenate(ease_y), np.concatenate(fold)
    ease = fit_logistic(ex, ey, l2)
    oof = np.zeros(len(ey))
    for k in (0, 1):  # out-of-fold ease scores: the calibration never sees its own fit
        w = fit_logistic(ex[fold_all != k], ey[fold_all != k], l2)
        oof[fold_all == k] = sigmoid(ex[fold_all == k] @ w[:-1] + w[-1])
    calibration = np.stack([oof, np.concatenate(weak_q), np.concatenate(strong_q)], axis=1)
    model = RouterModel(
        embedder=embedder_name,
        dim=vectors.shape[1],
        feature_mean=mean.astype(np.float32),
        feature_scale=scale.astype(np.float32),
        heads=heads,
        ease=ease,
        threshold=0.5,
        calibration=calibration,
        trained_prompts=np.array(sorted({prompt_hash(p) for p in all_prompts}), dtype=np.uint64),
        centroids=centroids,
        mean_costs={m: float(np.mean(v)) for m, v in costs.items()},
        meta={"trained_on": [t.source for t in train], "rows": int(len(all_prompts)), "l2": l2},
    )
    model.threshold = threshold_for_quality(calibration, quality_target)
    model.meta["calibrated_for"] = {"quality_target": quality_target}
    model.meta["operating_margin"] = margin
    model.meta["ease_margin"] = plain_margin.get("two_models", 0.0)
    model.meta["margin_cv"] = margin_cv
    model.meta["topic_clusters"] = {"chosen": len(centroids), "out_of_fold_savings": cluster_cv}
    return model


MARGINS = tuple(round(0.005 * i, 3) for i in range(13))  # 0 .. 0.06


def _fit_heads(train: Sequence[LabelledSet], x: np.ndarray, offsets: np.ndarray, l2: float, keep: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One logistic head per model over every file that scores it (rows in `keep` only)."""
    heads: dict[str, np.ndarray] = {}
    for name in sorted({m for t in train for m in t.models}):
        xs, ys = [], []
        for i, (t, start) in enumerate(zip(train, offsets, strict=False)):
            if name in t.models:
                col = t.scores[:, t.models.index(name)]
                ok = ~np.isnan(col) & (True if keep is None else keep[i])
                xs.append(x[start : start + len(t.prompts)][ok])
                ys.append(col[ok])
        heads[name] = fit_logistic(np.vstack(xs), np.concatenate(ys), l2)
    return heads


def _choose_topic_clusters(
    train: Sequence[LabelledSet], x: np.ndarray, vectors: np.ndarray, offsets: np.ndarray,
    folds: Sequence[np.ndarray], l2: float, target: float,
) -> tuple[np.ndarray, dict[str, float], dict, dict[str, float], dict[str, float]]:
    """The topic-cluster count (CLUSTER_CHOICES) whose heads save most out of fold at their
    cross-validated margins: mean cost_reduction over the files of the many-model kind
    (two-model files when there are none). Ties keep the fewer clusters. Also returns the
    margins of the plain heads (k = 0), which share the ease head's features."""
    best: tuple[float, np.ndarray, dict[str, float], dict] | None = None
    savings: dict[str, float] = {}
    plain: dict[str, float] = {}
    for k in CLUSTER_CHOICES:
        if k > len(x) // 20:
            continue  # too few rows per cluster to learn an offset
        centroids = topic_centroids(vectors, k)
        margin, cv = _cross_validate_margin(train, np.hstack([x, topic_features(vectors, centroids)]), offsets, folds, l2, target)
        group = "more_models" if "more_models" in margin else "two_models"
        files = [rows for t, rows in ((t, cv["out_of_fold"].get(t.source)) for t in train)
                 if rows is not None and (len(t.models) > 2) == (group == "more_models")]
        at = MARGINS.index(margin[group]) if group in margin else 0
        saved = float(np.mean([rows[at][2] for rows in files])) if files else 0.0
        savings[str(k)] = round(saved, 4)
        if k == 0:
            plain = margin
        if best is None or saved > best[0] + 1e-9:
            best = (saved, centroids, margin, cv)
    assert best is not None  # k = 0 always qualifies
    return best[1], best[2], best[3], savings, plain


def _cross_validate_margin(
    train: Sequence[LabelledSet], x: np.ndarray, offsets: np.ndarray, folds: Sequence[np.ndarray], l2: float, target: float
) -> tuple[dict[str, float], dict]:
    """Per policy kind (two models, or more), the smallest margin for `choose_policy` whose
    realised quality keeps `target` on EVERY training file of that kind; measured on
    out-of-fold predictions (2 folds by prompt hash within the training half). The goal
    holds per file, and with an equal-weight mean one file's surplus hid another's miss
    (arc at 0.934). Choosing among many models' noisy predictions favours the
    over-estimated ones (the winner's curse), so the many-model policy needs a larger margin."""
    oof = [np.zeros((len(t.prompts), len(t.models))) for t in train]
    for k in (0, 1):
        heads = _fit_heads(train, x, offsets, l2, keep=[f != k for f in folds])
        for i, (t, start) in enumerate(zip(train, offsets, strict=False)):
            xt = x[start : start + len(t.prompts)][folds[i] == k]
            oof[i][folds[i] == k] = np.stack([sigmoid(xt @ heads[m][:-1] + heads[m][-1]) for m in t.models], axis=1)
    table: dict[str, list[list[float]]] = {}
    for i, t in enumerate(train):
        ok = ~np.isnan(t.scores).any(axis=1)
        if t.costs is not None:
            costs = np.where(np.isnan(t.costs), np.nanmean(t.costs, axis=0), t.costs)[ok]
        elif all(m in REFERENCE_PRICES for m in t.models):
            costs = np.tile([REFERENCE_PRICES[m] for m in t.models], (int(ok.sum()), 1))
        else:
            continue  # no prices: the policy has nothing to trade quality against
        if ok.sum() < 20:
            continue
        scores = t.scores[ok]
        strong, rows = int(np.argmax(scores.mean(axis=0))), np.arange(int(ok.sum()))
        table[t.source] = []
        for margin in MARGINS:
            choice = choose_policy(oof[i][ok], costs.mean(axis=0), target, margin)
            table[t.source].append([margin, round(float(scores[rows, choice].mean() / scores[:, strong].mean()), 4), round(float(1 - costs[rows, choice].sum() / costs[:, strong].sum()), 4)])
    chosen: dict[str, float] = {}
    for group in ("two_models", "more_models"):
        files = [v for t, v in ((t, table.get(t.source)) for t in train) if v is not None and (len(t.models) <= 2) == (group == "two_models")]
        if files:
            chosen[group] = next((m for j, m in enumerate(MARGINS) if min(v[j][1] for v in files) >= target), MARGINS[-1])
    return chosen, {"target": target, "columns": ["margin", "quality_retained", "cost_reduction"], "out_of_fold": table}


def threshold_for_quality(calibration: np.ndarray, target: float) -> float:
    """Highest-saving threshold whose routed quality keeps `target` of the strongest model's
    quality. `calibration` rows are (ease, weak quality, strong quality): the artifact's
    out-of-fold training rows with their labels, or unlabelled prompts with the per-model
    heads' predicted correctness (which see a task's own priors where the pooled
    calibration misprices it)."""
    ease, weak, strong = calibration[:, 0], calibration[:, 1], calibration[:, 2]
    goal = target * strong.mean()
    candidates = np.unique(np.concatenate([ease, [0.0, 1.0 + 1e-9]]))
    best = 1.0 + 1e-9  # everything strong
    for t in candidates[::-1]:  # walk from all-strong towards all-weak
        quality = np.where(ease >= t, weak, strong).mean()
        if quality >= goal:
            best = float(t)
        else:
            break
    return best


def choose_policy(predicted: np.ndarray, price: np.ndarray, target: float, margin: float) -> np.ndarray:
    """Label-free operating point over known models: per prompt, argmax_m (p_m - lam * price_m),
    with the cheapest lam whose mean predicted quality keeps (target + margin) of the
    predicted-strongest model's. `margin` is the artifact's cross-validated safety margin:
    predicted quality on an unseen file is miscalibrated, and the margin is what made the
    realised quality hold the target across held-out datasets. Returns the model index per row."""
    strong = int(np.argmax(predicted.mean(axis=0)))
    goal = min(target + margin, 1.0) * predicted[:, strong].mean()
    rel = price / price.max()
    rows = np.arange(len(predicted))
    best, best_cost = np.full(len(predicted), strong), float(price[strong]) * len(predicted)
    cheaper: np.ndarray | None = None  # the next cheaper policy, which misses the goal
    for lam in np.logspace(-4, 2, 160):
        choice = np.argmax(predicted - lam * rel[None, :], axis=1)
        if predicted[rows, choice].mean() >= goal:
            if price[choice].sum() < best_cost:
                best, best_cost = choice, float(price[choice].sum())
        elif price[choice].sum() < best_cost and (cheaper is None or price[choice].sum() > price[cheaper].sum()):
            cheaper = choice
    if cheaper is not None:  # mix: move the prompts that lose least quality per dollar saved
        loss = predicted[rows, best] - predicted[rows, cheaper]
        saved = price[best] - price[cheaper]
        movable = np.where(saved > 0)[0]
        order = movable[np.argsort(loss[movable] / saved[movable], kind="stable")]
        slack = (predicted[rows, best].mean() - goal) * len(predicted)
        spent = np.cumsum(loss[order])
        mixed = best.copy()
        take = order[: int(np.searchsorted(spent, slack + 1e-12, side="right"))]
        mixed[take] = cheaper[take]
        best = mixed
    return best


def threshold_for_strong_share(scores: np.ndarray, share: float) -> float:
    """Threshold that sends `share` of these (unlabelled) prompts to the stronger tier."""
    if not 0.0 <= share <= 1.0:
        raise ValueError("strong share must be within [0, 1]")
    if share >= 1.0:
        return 1.0 + 1e-9
    return float(np.quantile(scores, share))


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
