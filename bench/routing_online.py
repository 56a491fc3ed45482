"""`thrifty bench routing --online --shadow-rate R [--judge-noise P]`: the router calibrated on the stream.

Replays the scored rows of a labelled file as a seeded random stream, two tiers at a time:
the reference (the operator's baseline: the priciest model) and one cheaper tier, which the
calibrator picks among the cheaper models (price <= CHEAP_PRICE_SHARE of the reference's;
operator-known list prices, no labels). Every request is scored by the shipped artifact (ease,
topic cluster, and its per-model heads where it has them: the label-free prior). A share R of
requests is shadow-sampled: only then are its labels revealed (the judge; `--judge-noise` flips
that share of the cheap tiers' verdicts) and every call the request did not already make is
paid for (the reference's and the candidate cheap tiers'). `controller.quality_calibration`
turns the verdicts into the tier and threshold used for the following requests. Reported over
the whole stream, shadow spend included: quality_retained, cost_reduction, shadow_share (of
requests) and shadow_spend_share (of spend), final tier and threshold, and `random_mix` (the
best mix of the reference with one cheaper model, picked on labels, the baseline to beat) and
`label_bound` (the ease cut and tier chosen on all labels: the most any threshold on this
router's ease order can save at the target, with free shadows and after the shadow spend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thrifty.controller.quality_calibration import CONSERVATIVE, QualityCalibrator, Verdict

CHEAP_PRICE_SHARE = 0.2  # a cheaper tier is one whose price is at most this share of the reference's
RECOMPUTE_EVERY = 10  # requests between threshold updates (also after every verdict)
# The calibrator's prior here is the artifact's per-model heads (known models) and its confidence;
# chosen on all four development files together (seeds 0-2, judge noise 0 and 0.1): the most
# savings at which every file kept 0.95 over the stream. Weaker priors (300) or 0.9 confidence:
# see docs/design/router.md, "Online calibration".
PRIOR_STRENGTH = 1000.0
CONFIDENCE = 0.95
# Without per-model heads for the file's models the prior is the generic ease score, fitted on
# other model pairs: the calibrator's default weight (on MMLU with an artifact that never saw
# it, weight 1000 kept 0.940 over the stream; docs/design/router.md).
GENERIC_PRIOR_STRENGTH = 20.0


def cheaper_tiers(costs: np.ndarray, reference: int) -> list[int]:
    """The cheap tiers the stream may route to: priced at most CHEAP_PRICE_SHARE of the reference."""
    price = costs.mean(axis=0)
    out = [m for m in range(len(price)) if m != reference and price[m] <= CHEAP_PRICE_SHARE * price[reference]]
    return out or [m for m in range(len(price)) if m != reference and price[m] < price[reference]]


def label_bound(ease: np.ndarray, scores: np.ndarray, costs: np.ndarray, reference: int, target: float, shadow_rate: float) -> dict:
    """What the stream could reach at best: the ease cut and cheap tier chosen on ALL labels (an
    oracle no online method has) that keep `target` of the reference's quality with the least spend,
    with free shadows and with the spend of a uniform shadow sample at `shadow_rate` (every call the
    shadowed request did not make, as the stream pays). Why: it separates what the calibrator leaves
    on the table from what the shadow budget and the ease order allow at all."""
    cands = cheaper_tiers(costs, reference)
    ref_q, ref_cost = float(scores[:, reference].sum()), float(costs[:, reference].sum())
    order = np.argsort(-ease, kind="stable")
    paid = costs[:, [reference, *cands]].sum(axis=1)  # a shadowed request pays all of these but the one served
    best = {"cost_reduction": 0.0, "with_shadow_spend": -shadow_rate * float((paid - costs[:, reference]).sum()) / ref_cost,
            "cheap_tier": None, "cheap_share": 0.0}
    for m in cands:
        loss = np.cumsum(scores[order, reference] - scores[order, m])  # first k+1 easiest rows to the cheap tier
        saved = np.cumsum(costs[order, reference] - costs[order, m])
        ok = np.nonzero(1 - loss / ref_q >= target - 1e-12)[0] if ref_q > 0 else np.array([], dtype=int)
        if len(ok) == 0:
            continue
        k = int(ok[np.argmax(saved[ok])])
        if saved[k] / ref_cost <= best["cost_reduction"]:
            continue
        served = np.full(len(ease), reference)
        served[order[: k + 1]] = m
        shadow = shadow_rate * float((paid - costs[np.arange(len(ease)), served]).sum())
        best = {"cost_reduction": float(saved[k] / ref_cost), "with_shadow_spend": float((saved[k] - shadow) / ref_cost),
                "cheap_tier": m, "cheap_share": (k + 1) / len(ease)}
    return best


@dataclass(frozen=True, slots=True)
class OnlineResult:
    quality_retained: float
    cost_reduction: float
    shadow_share: float
    shadow_spend_share: float
    final_tier: str | None
    final_threshold: float
    cheap_share: float
    calibrator: dict
    shadowed_rows: np.ndarray  # the rows whose labels the judge saw


def run_stream(
    *,
    ease: np.ndarray,
    clusters: np.ndarray,
    predicted: np.ndarray | None,
    scores: np.ndarray,
    costs: np.ndarray,
    models: list[str],
    reference: int,
    target: float,
    shadow_rate: float,
    judge_noise: float,
    start_threshold: float,
    seed: int,
    confidence: float = CONFIDENCE,
    prior_strength: float | None = None,  # None: PRIOR_STRENGTH with heads, else GENERIC_PRIOR_STRENGTH
    noise_known: bool = True,
) -> OnlineResult:
    """One pass over the rows in a seeded random order; labels read only for shadow-sampled rows."""
    n = len(scores)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    draws = rng.random(n)
    sampled = np.zeros(n, dtype=bool)  # filled in stream order: a sampler with a budget never exceeds the rate
    flips = rng.random((n, len(models))) < judge_noise
    price = costs.mean(axis=0)
    candidates = cheaper_tiers(costs, reference)
    ref_name = models[reference]
    tier_price = {models[m]: float(price[m]) for m in [reference, *candidates]}
    if prior_strength is None:
        prior_strength = PRIOR_STRENGTH if predicted is not None else GENERIC_PRIOR_STRENGTH
    cal = QualityCalibrator(target=target, confidence=confidence, prior_strength=prior_strength, start_threshold=start_threshold,
                            judge_noise=judge_noise if noise_known else 0.0)
    tier, threshold = None, CONSERVATIVE
    served_q = served_cost = shadow_cost = 0.0
    cheap_served = shadowed = 0
    for step, i in enumerate(order):
        pred = None if predicted is None else {models[m]: float(predicted[i, m]) for m in [reference, *candidates]}
        cal.observe_traffic(float(ease[i]), int(clusters[i]), pred)
        if step % RECOMPUTE_EVERY == 0:
            tier, threshold = cal.choose(tier_price, ref_name, [models[m] for m in candidates])
        served = models.index(tier) if tier is not None and ease[i] >= threshold else reference
        cheap_served += served != reference
        served_q += scores[i, served]
        served_cost += costs[i, served]
        if draws[i] < shadow_rate and shadowed + 1 <= shadow_rate * (step + 1):
            sampled[i] = True
            shadowed += 1
            for m in [reference, *candidates]:
                if m != served:
                    shadow_cost += costs[i, m]
            for m in candidates:
                score = float(scores[i, m])
                if flips[i, m]:
                    score = 1.0 - score
                cal.observe(Verdict(float(ease[i]), int(clusters[i]), models[m], ref_name, score, float(scores[i, reference])))
            tier, threshold = cal.choose(tier_price, ref_name, [models[m] for m in candidates])
    all_ref_q, all_ref_cost = float(scores[:, reference].sum()), float(costs[:, reference].sum())
    total = served_cost + shadow_cost
    return OnlineResult(
        quality_retained=served_q / all_ref_q if all_ref_q > 0 else float("nan"),
        cost_reduction=1 - total / all_ref_cost,
        shadow_share=float(sampled.mean()),
        shadow_spend_share=shadow_cost / total if total > 0 else 0.0,
        final_tier=tier,
        final_threshold=min(threshold, 1.0),
        cheap_share=cheap_served / n,
        calibrator=cal.snapshot(),
        shadowed_rows=np.nonzero(sampled)[0],
    )
