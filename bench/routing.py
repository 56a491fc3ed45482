"""`thrifty bench routing --data FILE --target-quality 0.95`: cost vs quality of the learned router.

Reads a RouteLLM (`prompt,<weak>,<strong>`, bool or 0-1 scores) or RouterBench
(score and `|total_cost` per model) CSV. Prompts the shipped router was trained on
are dropped (the artifact keeps their hashes), so on the development files only
their held-out halves are scored, and unseen files are scored whole.

The operating point is chosen WITHOUT the file's labels (`choose_policy` over the
per-model heads' predictions, with the artifact's cross-validated margin); the labels
only measure what that choice achieved, next to the labelled curve's cheapest point,
random routing and the oracle. Costs: the file's `|total_cost` columns, else
`--cost MODEL=DOLLARS`, else RouteLLM's paper prices. Quality is measured against the
operator's baseline (`--reference`, default the priciest model), never the label-best one.
`--online` replays the rows as a stream calibrated from shadow verdicts instead
(bench/routing_online.py). Method, figures and history: docs/design/router.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thrifty.training.labels import REFERENCE_PRICES as DEFAULT_PRICES


@dataclass(slots=True)
class Point:
    quality: float
    cost: float
    strong_share: float


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thrifty bench routing", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="RouteLLM or RouterBench format CSV")
    p.add_argument("--target-quality", type=float, default=0.95, help="share of the strongest model's quality to keep")
    p.add_argument("--cost", action="append", default=[], metavar="MODEL=DOLLARS", help="price per call, when the file has no |total_cost")
    p.add_argument("--artifact", help="router artifact (default: the shipped one)")
    p.add_argument("--max-rows", type=int, default=3000, help="score at most this many held-out rows (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-cache", help="npz file to reuse prompt embeddings between runs")
    p.add_argument("--plot", metavar="FILE.png", help="also write the cost/quality curve with the chosen point and baselines (matplotlib, headless)")
    p.add_argument("--reference", metavar="MODEL", help="the operator's baseline model quality is measured against (default: the priciest)")
    p.add_argument("--online", action="store_true", help="replay the file as a stream; the threshold is calibrated online from shadow verdicts (bench/routing_online.py)")
    p.add_argument("--shadow-rate", type=float, default=0.05, help="--online: share of requests shadow-evaluated (labels revealed, calls paid)")
    p.add_argument("--judge-noise", type=float, default=0.0, help="--online: share of judge verdicts flipped (the calibrator is told the rate, as a judge's measured flip rate)")
    return p.parse_args(argv)


def _costs(data, overrides: list[str]) -> np.ndarray:
    n, m = data.scores.shape
    if data.costs is not None:
        costs = data.costs.copy()
        col_means = np.nanmean(costs, axis=0)
        return np.where(np.isnan(costs), col_means, costs)
    prices = dict(DEFAULT_PRICES)
    for item in overrides:
        name, _, value = item.partition("=")
        try:
            prices[name] = float(value)
        except ValueError:
            raise ValueError(f"--cost {item!r}: expected MODEL=DOLLARS") from None
    missing = [m_ for m_ in data.models if m_ not in prices]
    if missing:
        raise ValueError(f"no price for {missing}: the file has no |total_cost columns; pass --cost MODEL=DOLLARS")
    return np.tile(np.array([prices[m_] for m_ in data.models]), (n, 1))


def _evaluate(choice: np.ndarray, scores: np.ndarray, costs: np.ndarray, strong: int) -> Point:
    rows = np.arange(len(choice))
    return Point(
        quality=float(scores[rows, choice].mean()),
        cost=float(costs[rows, choice].sum()),
        strong_share=float((choice == strong).mean()),
    )


def router_curve(predicted: np.ndarray, scores: np.ndarray, costs: np.ndarray, strong: int) -> list[Point]:
    """Policies argmax_m (p_m - lam * price_m / price_max) over a sweep of lam, plus all-strongest."""
    price = costs.mean(axis=0)
    rel = price / price.max()
    points = [_evaluate(np.full(len(scores), strong), scores, costs, strong)]
    for lam in np.concatenate([[0.0], np.logspace(-4, 2, 240)]):
        choice = np.argmax(predicted - lam * rel[None, :], axis=1)
        points.append(_evaluate(choice, scores, costs, strong))
    return points


def ease_curve(ease: np.ndarray, scores: np.ndarray, costs: np.ndarray, strong: int, weak: int) -> list[Point]:
    """Two tiers, unknown models: the weak one answers when ease >= t, over a sweep of t."""
    points = []
    for t in np.concatenate([[1.1], np.quantile(ease, np.linspace(0, 1, 201))]):
        choice = np.where(ease >= t, weak, strong)
        points.append(_evaluate(choice, scores, costs, strong))
    return points


def apgr(points: list[Point], low: Point, high: Point) -> float:
    """Average performance gap recovered over the normalised cost axis [low.cost, high.cost]."""
    span_q = high.quality - low.quality
    span_c = high.cost - low.cost
    if span_q <= 0 or span_c <= 0:
        return float("nan")
    grid = np.linspace(0, 1, 101)
    xs = np.array([(p.cost - low.cost) / span_c for p in points])
    qs = np.array([p.quality for p in points])
    best = []
    for g in grid:  # best quality reachable at no more than this cost (the upper envelope)
        ok = xs <= g + 1e-12
        best.append(((qs[ok].max() if ok.any() else low.quality) - low.quality) / span_q)
    return float(np.trapezoid(best, grid))


def cheapest_meeting(points: list[Point], goal: float) -> Point | None:
    ok = [p for p in points if p.quality >= goal]
    return min(ok, key=lambda p: p.cost) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except (OSError, ValueError) as exc:
        print(f"thrifty bench routing: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from thrifty.proxy.levers.embedder import encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.router import ARTIFACT, RouterModel, router_view
    from thrifty.training.labels import load_labelled
    from thrifty.training.router_calibration import choose_policy

    if not 0 < args.target_quality <= 1:
        raise ValueError("--target-quality must be in (0, 1]")
    if not 0 <= args.shadow_rate <= 1:
        raise ValueError("--shadow-rate must be in [0, 1]")
    if not 0 <= args.judge_noise < 0.5:
        raise ValueError("--judge-noise must be in [0, 0.5)")
    model = RouterModel.load(args.artifact or ARTIFACT)
    data = load_labelled(args.data)
    seen = model.trained_on(data.prompts)
    complete = ~np.isnan(data.scores).any(axis=1)
    rows = np.where(~seen & complete)[0]
    if len(rows) == 0:
        raise ValueError(f"{args.data}: every row was used to train the router artifact; nothing held out to score")
    rng = np.random.default_rng(args.seed)
    if args.max_rows and len(rows) > args.max_rows:
        rows = np.sort(rng.choice(rows, args.max_rows, replace=False))
    data = data.subset(rows)
    costs = _costs(data, args.cost)
    scores = data.scores
    strong = _reference(data, costs, args.reference)  # the reference the target is defined against
    all_strong = Point(float(scores[:, strong].mean()), float(costs[:, strong].sum()), 1.0)
    goal = args.target_quality * all_strong.quality

    encoder = encoder_for(model.embedder, threads=2)
    vectors = encode_with_disk_cache(encoder, [router_view(p) for p in data.prompts], args.embed_cache)
    known = all(m in model.heads for m in data.models)
    if args.online:
        return _run_online(args, model, data, costs, vectors, strong, known, int(seen.sum()))
    if known:
        scorer = "per-model heads"
        predicted = model.correctness(vectors, data.prompts, data.models)
        curve = router_curve(predicted, scores, costs, strong)
        margin = model.margin_for(len(data.models))
        choice = choose_policy(predicted, costs.mean(axis=0), args.target_quality, margin)
        chosen = _evaluate(choice, scores, costs, strong)
    else:
        scorer = "ease (two tiers)"
        if len(data.models) != 2:
            raise ValueError(f"models {data.models} are unknown to the router artifact; only two-model files can use the generic ease score")
        weak = 1 - strong
        ease = model.ease_scores(vectors, data.prompts)
        curve = ease_curve(ease, scores, costs, strong, weak)
        # label-free: the artifact's calibrated threshold (set on its own training rows)
        choice = np.where(ease >= model.threshold, weak, strong)
        chosen = _evaluate(choice, scores, costs, strong)

    cheapest_model = int(np.argmin(costs.mean(axis=0)))
    low = Point(float(scores[:, cheapest_model].mean()), float(costs[:, cheapest_model].sum()), 0.0)
    read_off = cheapest_meeting(curve, goal)

    random_best = _random_mix(scores, costs, strong, goal)
    random_low = min(((scores[:, m].mean(), costs[:, m].sum()) for m in range(len(data.models))), key=lambda qc: qc[1])
    random_points = [Point(random_low[0] + p * (all_strong.quality - random_low[0]), (1 - p) * random_low[1] + p * all_strong.cost, p) for p in np.linspace(0, 1, 51)]

    best_per_row = scores.max(axis=1)
    oracle_choice = np.array([min(np.where(scores[i] >= best_per_row[i])[0], key=lambda m: costs[i, m]) for i in range(len(scores))])
    oracle = _evaluate(oracle_choice, scores, costs, strong)

    def summary(p: Point | None, curve_points: list[Point] | None = None) -> dict:
        if p is None:
            return {"cost_reduction": None, "quality_retained": None, "strong_share": None, "apgr": None}
        out = {
            "cost_reduction": round(1 - p.cost / all_strong.cost, 4),
            "quality_retained": round(p.quality / all_strong.quality, 4),
            "strong_share": round(p.strong_share, 4),
            "quality": round(p.quality, 4),
        }
        out["apgr"] = round(apgr(curve_points, low, all_strong), 4) if curve_points else None
        return out

    router = summary(chosen, curve)
    result = {
        "bench": "routing",
        "data": args.data,
        "rows_scored": int(len(scores)),
        "rows_excluded_seen_in_training": int(seen.sum()),
        "models": data.models,
        "strongest": data.models[strong],  # (the reference: kept under its old key for existing readers)
        "reference": data.models[strong],
        "scorer": scorer,
        "target_quality": args.target_quality,
        "calibration": f"label-free: predicted quality on the scored prompts, cross-validated margin {model.margin_for(len(data.models))}" if known else "artifact threshold (its training rows)",
        **router,
        "read_off_labelled_curve": summary(read_off, curve),
        "random": summary(random_best, random_points),
        "oracle": summary(oracle),
        "all_strongest": {"quality": round(all_strong.quality, 4), "cost_dollars": round(all_strong.cost, 6)},
        "curve": [{"cost_reduction": round(1 - p.cost / all_strong.cost, 4), "quality_retained": round(p.quality / all_strong.quality, 4), "strong_share": round(p.strong_share, 4)} for p in _thin(curve, 12)],
    }
    _print_table(result)
    if args.plot:
        from thrifty.bench import plots
        plots.routing(result, args.plot)
    print(json.dumps(result))
    return 0


def _reference(data, costs: np.ndarray, name: str | None) -> int:
    """The operator's baseline: --reference, else the priciest model (training.labels.reference_model)."""
    from thrifty.training.labels import reference_model

    if name is None:
        return reference_model(data, costs.mean(axis=0))
    if name not in data.models:
        raise ValueError(f"--reference {name!r}: not a model in the file ({', '.join(data.models)})")
    return data.models.index(name)


def _random_mix(scores: np.ndarray, costs: np.ndarray, strong: int, goal: float) -> Point:
    """Random routing: for each cheaper model, mixed with the reference just enough to meet the goal
    (picked on labels: a generous baseline); the cheapest such mix."""
    ref_q, ref_cost = float(scores[:, strong].mean()), float(costs[:, strong].sum())
    best: Point | None = None
    for m in range(scores.shape[1]):
        if m == strong:
            continue
        qm, cm = scores[:, m].mean(), costs[:, m].sum()
        if qm >= goal:
            p = 0.0
        elif ref_q > qm:
            p = (goal - qm) / (ref_q - qm)
        else:
            continue
        candidate = Point(qm + p * (ref_q - qm), (1 - p) * cm + p * ref_cost, p)
        if best is None or candidate.cost < best.cost:
            best = candidate
    return best or Point(ref_q, ref_cost, 1.0)


def _run_online(args: argparse.Namespace, model, data, costs: np.ndarray, vectors: np.ndarray, reference: int, known: bool, excluded: int) -> int:
    from thrifty.bench.routing_online import label_bound, run_stream

    scores = data.scores
    ease = model.ease_scores(vectors, data.prompts)
    clusters = np.argmax(vectors @ model.centroids.T, axis=1) if len(model.centroids) else np.full(len(scores), -1)
    predicted = model.correctness(vectors, data.prompts, data.models) if known else None
    r = run_stream(
        ease=ease, clusters=clusters, predicted=predicted, scores=scores, costs=costs, models=data.models,
        reference=reference, target=args.target_quality, shadow_rate=args.shadow_rate, judge_noise=args.judge_noise,
        start_threshold=0.0, seed=args.seed,  # no cap: the artifact's predictions are the warm start (the prior)
    )
    ref_q, ref_cost = float(scores[:, reference].mean()), float(costs[:, reference].sum())
    mix = _random_mix(scores, costs, reference, args.target_quality * ref_q)
    bound = label_bound(ease, scores, costs, reference, args.target_quality, args.shadow_rate)
    result = {
        "bench": "routing",
        "mode": "online",
        "data": args.data,
        "rows_scored": int(len(scores)),
        "rows_excluded_seen_in_training": excluded,
        "models": data.models,
        "reference": data.models[reference],
        "target_quality": args.target_quality,
        "shadow_rate": args.shadow_rate,
        "judge_noise": args.judge_noise,
        "seed": args.seed,
        "quality_retained": round(r.quality_retained, 4),
        "cost_reduction": round(r.cost_reduction, 4),
        "shadow_share": round(r.shadow_share, 4),
        "shadow_spend_share": round(r.shadow_spend_share, 4),
        "cheap_share": round(r.cheap_share, 4),
        "final_tier": r.final_tier,
        "final_threshold": round(r.final_threshold, 4),
        "random_mix": {"cost_reduction": round(1 - mix.cost / ref_cost, 4), "quality_retained": round(mix.quality / ref_q, 4)},
        "label_bound": {"cost_reduction": round(bound["cost_reduction"], 4), "with_shadow_spend": round(bound["with_shadow_spend"], 4),
                        "cheap_tier": None if bound["cheap_tier"] is None else data.models[bound["cheap_tier"]],
                        "cheap_share": round(bound["cheap_share"], 4)},
        "calibrator": r.calibrator,
    }
    print(f"routing bench (online): {args.data}  ({result['rows_scored']} rows streamed, {excluded} excluded as seen in training)")
    print(f"reference: {result['reference']}   target: {args.target_quality:.0%}   shadow rate {args.shadow_rate}   judge noise {args.judge_noise}")
    print(f"{'policy':<28}{'cost_reduction':>16}{'quality_retained':>18}")
    print(f"{'online calibrated':<28}{result['cost_reduction']:>16}{result['quality_retained']:>18}")
    print(f"{'random mix (on labels)':<28}{result['random_mix']['cost_reduction']:>16}{result['random_mix']['quality_retained']:>18}")
    lb = result["label_bound"]
    print(f"{'label bound (oracle cut)':<28}{lb['cost_reduction']:>16}{args.target_quality:>18}   {lb['with_shadow_spend']} after this shadow rate's spend")
    print(f"shadow share {result['shadow_share']} (spend {result['shadow_spend_share']}), final tier {r.final_tier} at threshold {result['final_threshold']}")
    print(json.dumps(result))
    return 0


def _thin(points: list[Point], k: int) -> list[Point]:
    """Pareto points (cheaper and not worse), k of them spread over cost."""
    pareto = []
    for p in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if not pareto or p.quality > pareto[-1].quality:
            pareto.append(p)
    if len(pareto) <= k:
        return pareto
    idx = np.unique(np.linspace(0, len(pareto) - 1, k).round().astype(int))
    return [pareto[i] for i in idx]


def _print_table(r: dict) -> None:
    print(f"routing bench: {r['data']}  ({r['rows_scored']} rows scored, {r['rows_excluded_seen_in_training']} excluded as seen in training)")
    print(f"strongest: {r['strongest']}  quality {r['all_strongest']['quality']}   target: {r['target_quality']:.0%} of it   scorer: {r['scorer']}")
    print(f"{'policy':<34}{'cost_reduction':>16}{'quality_retained':>18}{'strong_share':>14}{'apgr':>8}")
    rows = [("router (label-free threshold)", r), ("router (read off labelled curve)", r["read_off_labelled_curve"]), ("random (best mix, on labels)", r["random"]), ("oracle", r["oracle"])]
    for name, s in rows:
        cells = [s.get(k) for k in ("cost_reduction", "quality_retained", "strong_share", "apgr")]
        print(f"{name:<34}" + "".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (16, 18, 14, 8), strict=True)))
    print("curve (pareto points): " + ", ".join(f"{p['cost_reduction']:.2f}->{p['quality_retained']:.3f}" for p in r["curve"]))


if __name__ == "__main__":
    sys.exit(main())
