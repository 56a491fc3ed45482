"""Operating points for the router: the threshold or per-prompt policy that keeps a quality target.

`thrifty router calibrate`, the router's training (its margin cross-validation) and the
routing/cost benches set thresholds with these; serving only reads the artifact's threshold,
so no labels are needed at serving time.
"""

from __future__ import annotations

import numpy as np


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
