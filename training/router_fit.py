"""Fitting the router (`thrifty router train`): per-model heads, the ease head, topic clusters, margins.

Writes nothing itself: `train_router` returns a `RouterModel` (the serving class, which
saves the artifact), so the artifact's format lives in one place. Deterministic given the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from thrifty.proxy.levers.router import (
    RouterModel,
    cheap_features,
    prompt_hash,
    router_view,
    sigmoid,
    topic_features,
)
from thrifty.training.labels import REFERENCE_PRICES, LabelledSet, default_weak, reference_model
from thrifty.training.router_calibration import choose_policy, threshold_for_quality

TRAIN_BUCKETS = 50  # prompts whose hash % 100 < 50 train the router; the rest stay held out
CLUSTER_CHOICES = (0, 4, 8, 16)  # topic clusters the heads may use; training cross-validates the count


def is_training_prompt(prompt: str) -> bool:
    return prompt_hash(prompt) % 100 < TRAIN_BUCKETS


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
        s, w = reference_model(t, mc), default_weak(t, mc)
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
