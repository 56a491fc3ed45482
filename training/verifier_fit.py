"""Fitting the semantic-cache verifier (`thrifty router train-verifier`) with scikit-learn.

Contract: `train_verifier(pairs, cosines, labels, ...)` returns a `Verifier` (the serving
class, which saves the artifact) whose threshold keeps a precision target on out-of-fold
scores; `split_of` fixes which pairs are never read (held out for the benches). Why here:
serving evaluates the copied trees and network with numpy alone, so scikit-learn stays
out of the sidecar. The design and its measurements are in docs/design/semantic-cache.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thrifty.proxy.levers.router import sigmoid
from thrifty.proxy.levers.verifier import PairMLP, TreeEnsemble, Verifier, pair_hash, vector_interaction
from thrifty.proxy.levers.verifier_features import DocumentFrequency, pair_features, same_words_or


def trees_from_sklearn(model) -> TreeEnsemble:
    """Copy a fitted binary HistGradientBoostingClassifier (numeric features, no NaN)."""
    trees = [predictors[0].nodes for predictors in model._predictors]
    width = max(len(t) for t in trees)
    shape = (len(trees), width)
    feature, left, right = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    threshold, value = np.zeros(shape), np.zeros(shape)
    for t, nodes in enumerate(trees):
        n = len(nodes)
        own = np.arange(n)
        leaf = nodes["is_leaf"].astype(bool)
        feature[t, :n] = np.where(leaf, 0, nodes["feature_idx"])
        threshold[t, :n] = np.where(leaf, np.inf, nodes["num_threshold"])
        left[t, :n] = np.where(leaf, own, nodes["left"])
        right[t, :n] = np.where(leaf, own, nodes["right"])
        value[t, :n] = np.where(leaf, nodes["value"], 0.0)
    depth = max(int(t["depth"].max()) for t in trees)
    return TreeEnsemble(feature, threshold, left, right, value, float(np.ravel(model._baseline_prediction)[0]), depth)


def mlp_from_sklearn(model) -> PairMLP:
    """Copy a fitted binary MLPClassifier (activation='relu', logistic output)."""
    if model.activation != "relu" or model.out_activation_ != "logistic":
        raise ValueError("stage 1 must be a binary MLPClassifier with relu hidden layers")
    return PairMLP([np.asarray(w, dtype=np.float32) for w in model.coefs_], [np.asarray(b, dtype=np.float32) for b in model.intercepts_])


def threshold_for_precision(scores: np.ndarray, labels: np.ndarray, precision: float, min_support: int = 50) -> float:
    """Lowest score threshold whose accepted set keeps `precision` (with some support)."""
    order = np.argsort(-scores)
    hits = np.cumsum(labels[order])
    counts = np.arange(1, len(order) + 1)
    prec = hits / counts
    ok = np.where((prec >= precision) & (counts >= min_support))[0]
    if len(ok) == 0:
        return float(scores.max() + 1e-9)
    return float(scores[order][ok.max()])


def split_of(pair: tuple[str, str]) -> str:
    """Deterministic three-way split of labelled pairs: fit 40%, calibrate 20%, held out 40%.

    The verifier trains on fit + calibrate (5-fold for its threshold); held out is never read."""
    bucket = pair_hash(*pair) % 100
    return "fit" if bucket < 40 else "calibrate" if bucket < 60 else "heldout"


TREE_PARAMS = {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40, "l2_regularization": 1.0}
FOLDS = 5


# A fixed epoch count, not early stopping: the fold networks and the served one must be
# equally sharp (docs/design/semantic-cache.md, "Stage 1 epochs").
STAGE1_PARAMS = {"hidden_layer_sizes": (512,), "alpha": 1e-3, "max_iter": 25, "early_stopping": False, "random_state": 0}


def _fit_trees(x: np.ndarray, y: np.ndarray) -> TreeEnsemble:
    from sklearn.ensemble import HistGradientBoostingClassifier  # training only; serving needs numpy alone

    model = HistGradientBoostingClassifier(**TREE_PARAMS, early_stopping=False, random_state=0).fit(x, y)
    return trees_from_sklearn(model)


def _fit_stage1(u: np.ndarray, v: np.ndarray, y: np.ndarray, params: dict) -> PairMLP:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier  # training only

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds training time on purpose
        return mlp_from_sklearn(MLPClassifier(**params).fit(vector_interaction(u, v), y))


def _fold_of(pairs: Sequence[tuple[str, str]], rows: np.ndarray) -> np.ndarray:
    return np.array([pair_hash(*pairs[i]) // 100 % FOLDS for i in rows], dtype=int)


def _fit_with_threshold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, same: list[tuple[str, str]], precision_target: float) -> tuple[TreeEnsemble, float, dict]:
    """Trees on all rows; threshold for `precision_target` on out-of-fold scores."""
    out_of_fold = np.zeros(len(y))
    for k in range(FOLDS):
        out_of_fold[fold == k] = _fit_trees(x[fold != k], y[fold != k]).log_odds(x[fold == k])
    probabilities = same_words_or(same, sigmoid(out_of_fold))
    threshold = threshold_for_precision(probabilities, y, precision_target)
    accepted = probabilities >= threshold
    report = {"precision": round(float(y[accepted].mean()), 4) if accepted.any() else None,
              "recall_of_candidates": round(float(y[accepted].sum() / max(y.sum(), 1)), 4)}
    return _fit_trees(x, y), threshold, report


def train_verifier(
    pairs: list[tuple[str, str]],
    cosines: np.ndarray,
    labels: np.ndarray,
    *,
    similarity_floor: float,
    precision_target: float,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    embedder: str | None = None,
    stage1_params: dict | None = None,
) -> Verifier:
    """Fit the trees on every non-held-out candidate (cosine >= floor); the threshold keeps
    `precision_target` on out-of-fold scores (5 folds by pair hash), so it is set on
    pairs each fold's model did not see. Held-out pairs passed in are ignored.

    With `vectors` (each pair's two sentence vectors from `embedder`), stage 1 is fitted
    on all non-held-out pairs (not only candidates), and the trees get its probability
    as one more feature: cross-fitted with the same folds for the rows the trees learn
    from, so they never see an in-sample stage-1 score. The text-only trees are fitted
    as well (the model for other encoders). `stage1_params` overrides `STAGE1_PARAMS`."""
    labels = np.asarray(labels).astype(int)
    keep = np.array([split_of(p) != "heldout" for p in pairs], dtype=bool)
    rows = np.flatnonzero(keep & (np.asarray(cosines) >= similarity_floor))
    if len(rows) < 10 * FOLDS or len(set(labels[rows].tolist())) < 2:
        raise ValueError(f"need at least {10 * FOLDS} candidate pairs with both labels above cosine {similarity_floor}; got {len(rows)}")
    df = DocumentFrequency.from_texts(t for i in np.flatnonzero(keep) for t in pairs[i])
    x = np.stack([pair_features(*pairs[i], float(cosines[i]), df) for i in rows])
    y = labels[rows]
    fold = _fold_of(pairs, rows)
    same = [pairs[i] for i in rows]
    trained = frozenset(pair_hash(*pairs[i]) for i in np.flatnonzero(keep))
    text_trees, text_threshold, text_report = _fit_with_threshold(x, y, fold, same, precision_target)
    text_only = Verifier(trees=text_trees, document_frequency=df, threshold=text_threshold, similarity_floor=similarity_floor, trained_pairs=trained)
    text_only.meta = {"training_candidates": int(len(rows)), "precision_target": precision_target, "out_of_fold": text_report, "trees": dict(TREE_PARAMS), "text_only": True}
    if vectors is None:
        return text_only
    u, v = (np.asarray(a, dtype=np.float32) for a in vectors)
    if u.shape != v.shape or len(u) != len(pairs):
        raise ValueError(f"vectors must be two ({len(pairs)}, d) arrays; got {u.shape} and {v.shape}")
    params = {**STAGE1_PARAMS, **(stage1_params or {})}
    every = np.flatnonzero(keep)
    every_fold = _fold_of(pairs, every)
    stage1_score = np.zeros(len(pairs))
    for k in range(FOLDS):  # cross-fitted stage-1 scores for every row the trees learn from
        fit, out = every[every_fold != k], every[every_fold == k]
        stage1_score[out] = _fit_stage1(u[fit], v[fit], labels[fit], params).probability(u[out], v[out])
    stage1 = _fit_stage1(u[every], v[every], labels[every], params)  # served: same recipe, all pairs
    stacked = np.hstack([x, stage1_score[rows, None]])
    trees, threshold, report = _fit_with_threshold(stacked, y, fold, same, precision_target)
    verifier = Verifier(trees=trees, document_frequency=df, threshold=threshold, similarity_floor=similarity_floor,
                        stage1=stage1, embedder=embedder, text_only=text_only, trained_pairs=trained)
    verifier.meta = {
        "training_candidates": int(len(rows)),
        "stage1_training_pairs": int(len(every)),
        "precision_target": precision_target,
        "out_of_fold": report,
        "text_only_out_of_fold": text_report,
        "trees": dict(TREE_PARAMS),
        "stage1": {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
    }
    return verifier
