"""`thrifty bench cost --trace FILE --routing FILE [--cache-pairs FILE]`: the headline, dollars at equal quality and SLO.

Replays an Azure-format trace (arrival times and token counts) in which every request
carries a real prompt and its per-model quality labels from a RouteLLM or RouterBench
file, and, with `--cache-pairs`, a stated share of exact repeats and QQP paraphrases
(see `thrifty.bench._cost_workload`). In the same run it measures:

- baseline: every request on the largest tier, no caches, round-robin, replicas fixed at
  the smallest count that meets the SLO at the trace's peak;
- then each lever added in turn, the last row being Thrifty: +router (the shipped
  `RouterModel`, small tier = the file's cheaper model, threshold from a quality budget:
  the artifact's out-of-fold training rows must keep (target + its ease margin, the
  margin cross-validated for heads over the ease score's own features) / the quantized
  tiers' published recovery, so the fleet as a whole keeps the target; the same
  threshold in every row),
  +exact cache, +semantic cache (shipped verifier), +balancer (least-loaded instead of
  round-robin), +autoscaler (the controller's `Autoscaler`, both tiers coupled), and
  +quantization/speculative profiles (FP8 small tier; FP8 large tier on half the GPUs, with
  speculative decoding). Quantized tiers' answers are scored at their published quality
  recovery (the profile's `quality_recovery`, from the FP8 model cards), not as free.

Engines are `thrifty.sim.model` replicas on a virtual clock; dollars = GPU-hours
x the stated price per GPU type. The small tier answers with the labels of the file's
cheaper model (Mixtral-8x7B for RouteLLM's MMLU) but runs the Llama-3-8B profile (no
Mixtral profile is derived here): a stand-in that flatters the small tier's cost per
answer; `--small-profile` takes another one. The router's threshold comes from its
calibration pooled over its training files, which prices a task by the training mix
and alone misses the quality goal on the RouterBench files (docs/design/router.md). So
when the artifact has per-model heads for both tiers' models,
they check it on the scored prompts (no labels): if they predict the pooled threshold
keeps less than the target, it is raised until they predict target + their
cross-validated margin (`_predicted_quality_guard`); on MMLU it stands.
`--strong-share` calibrates on the scored prompts instead. Every step is also costed both ways, fixed at its own
peak and under the autoscaler (`static` / `autoscaled` in the breakdown): with a few
whole replicas per tier, a lever that removes 10% of the load saves nothing at a static
peak, while the autoscaler turns it into GPU-hours. quality_retained = mean answer quality / the baseline's
(labels of the model that produced each answer; a cache hit for a different question
scores 0). slo_attainment = share of requests answered within the TTFT SLO (cache hits
count as answered at once; shed requests as misses). Nothing is tuned on the scored
file's labels: rows the router was trained on and QQP pairs the verifier saw are left out.

The quality loop runs in every step with the router, as in the sidecar (`_cost_ledger`,
`_cost_online`): a seeded control group (`--control-share`, config `quality.control.rate`)
takes the baseline path inside the same fleet; shadow calls (`--shadow-rate`,
`quality.shadow.rate`) load the same tiers and are charged to the treated group; the
threshold above is where the router starts, and from the first shadow verdict on each
control round routes with the controller's `QualityCalibrator` (the online loop; the label
judge; `--offline` holds the threshold). `ledger` in the report: measured savings (cost per
treated request vs per control request, each request's share of its tier's GPU-hours) with
the production interval, modelled savings beside them, quality per group; `online`: the
verdicts and the threshold's path. A control group that shares the fleet measures what the
router and caches save there; the balancer, autoscaler and quantized profiles lower its own
cost too, so the headline cost_reduction against the baseline fleet is not expected inside
its interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thrifty.config import QualitySettings
from thrifty.sim.traces import VARIANTS

SMALL, LARGE = "small", "large"
_QUALITY = QualitySettings()  # the sidecar's quality-loop defaults (control share, shadow rate, confidence)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thrifty bench cost", description=__doc__.splitlines()[0])
    p.add_argument("--trace", required=True, help="Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or Mooncake JSON lines")
    p.add_argument("--variant", choices=VARIANTS, help="reshape the trace after loading (thrifty.sim.traces.make_variant)")
    p.add_argument("--variant-seed", type=int, default=0, help="seed of --variant (default 0)")
    p.add_argument("--routing", required=True, help="RouteLLM or RouterBench format CSV (prompts + per-model labels)")
    p.add_argument("--cache-pairs", help="QQP-format JSON lines {text_a, text_b, label}: source of paraphrases")
    p.add_argument("--repeat-share", type=float, default=0.2,
                   help="share of requests that repeat or paraphrase an earlier one (needs --cache-pairs; default 0.2)")
    p.add_argument("--exact-fraction", type=float, default=0.5, help="of those, the share that are exact repeats (default 0.5)")
    p.add_argument("--limit", type=int, help="use only the first N requests of the trace (default: all)")
    p.add_argument("--copies", type=int, default=4,
                   help="overlay K copies of the trace, each with its own prompts: the public trace samples a larger service (default 4)")
    p.add_argument("--max-rows", type=int, default=2000,
                   help="distinct routing prompts to draw from (embedding cost; 0: all unseen rows; default 2000)")
    p.add_argument("--max-pairs", type=int, default=1000, help="distinct QQP pairs to draw from (default 1000)")
    p.add_argument("--router-artifact", help="router artifact (default: the shipped proxy/levers/router_model.npz)")
    p.add_argument("--target-quality", type=float, default=0.95,
                   help="end-to-end quality to keep (default 0.95): the router is calibrated for it plus the artifact's "
                        "cross-validated ease margin, divided by the quantized tiers' published quality recovery")
    p.add_argument("--router-threshold", type=float, help="override the quality-budget threshold")
    p.add_argument("--strong-share", type=float,
                   help="label-free calibration instead: threshold sending this share of the scored prompts to the large tier")
    p.add_argument("--verifier", help="semantic-cache verifier artifact (default: the shipped one)")
    p.add_argument("--encoder", help="semantic-cache embedding model (default all-MiniLM-L6-v2, the sidecar's; "
                   "'hashed-ngrams:DIM' needs no model); the router always uses its artifact's encoder")
    p.add_argument("--embed-cache", help="file prefix to reuse embeddings between runs (one .npz per encoder)")
    p.add_argument("--small-model", help="label column for the small tier (default: the router's weak model for the file)")
    p.add_argument("--large-model", help="label column for the large tier (default: the reference, the file's priciest model)")
    p.add_argument("--small-profile", default="a100-llama3-8b-fp8", help="small tier with quantization (default a100-llama3-8b-fp8)")
    p.add_argument("--small-base-profile", default="a100-llama3-8b", help="small tier before quantization (default a100-llama3-8b)")
    p.add_argument("--large-profile", default="h100-llama3-70b-tp4", help="large tier before quantization (default h100-llama3-70b-tp4)")
    p.add_argument("--large-quant-profile", default="h100-llama3-70b-fp8-tp2",
                   help="large tier with quantization (default h100-llama3-70b-fp8-tp2: FP8, half the GPUs)")
    p.add_argument("--spec-tokens", type=int, default=4, help="large tier speculative tokens (config default 4; 0 = off)")
    p.add_argument("--spec-acceptance", type=float, default=0.6, help="draft acceptance rate (config default 0.6)")
    p.add_argument("--gpu-hour-usd", action="append", default=[], metavar="PROFILE=USD",
                   help="price per GPU-hour for a profile's GPU type (default: the profile's list price)")
    p.add_argument("--startup-s", type=float, default=90.0, help="replica start-up delay (default 90 s)")
    p.add_argument("--slo-ttft-s", type=float, default=2.0, help="TTFT SLO (default 2 s)")
    p.add_argument("--store-delay-s", type=float, default=30.0, help="an answer is cacheable this long after its request (default 30 s)")
    p.add_argument("--control-share", type=float, default=_QUALITY.control.rate,
                   help=f"savings ledger: share of requests served by the baseline path (config quality.control.rate, "
                        f"default {_QUALITY.control.rate})")
    p.add_argument("--shadow-rate", type=float, default=_QUALITY.shadow.rate,
                   help=f"share of treated answers re-asked in the background, charged as shadow spend (config "
                        f"quality.shadow.rate, default {_QUALITY.shadow.rate})")
    p.add_argument("--offline", action="store_true",
                   help="hold the router threshold fixed for the whole run; by default it starts there and then the shadow "
                        "verdicts feed the controller's QualityCalibrator, whose threshold each control round routes the "
                        "requests that follow (the online loop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="also write the lever-by-lever cost waterfall (matplotlib, headless)")
    return p.parse_args(argv)


@dataclass(slots=True)
class Step:
    name: str
    router: bool
    exact: bool
    semantic: bool
    balancer: bool
    autoscale: bool
    profiles: bool
    note: str = ""


STEPS = [
    Step("baseline", False, False, False, False, False, False),
    Step("+router", True, False, False, False, False, False),
    Step("+exact cache", True, True, False, False, False, False),
    Step("+semantic cache", True, True, True, False, False, False),
    Step("+balancer", True, True, True, True, False, False),
    Step("+autoscaler", True, True, True, True, True, False),
    Step("+quant/spec profiles", True, True, True, True, True, True),
]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except (OSError, ValueError) as exc:
        print(f"thrifty bench cost: {exc}", file=sys.stderr)
        return 2


def _prices(overrides: list[str]) -> dict[str, float]:
    """`PROFILE=USD` pairs: the price per GPU-hour of that profile's GPU type."""
    out: dict[str, float] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if not name.strip() or price < 0:
            raise ValueError(f"--gpu-hour-usd expects PROFILE=USD (USD >= 0), got {item!r}")
        out[name.strip()] = price
    return out


def _fleet_budget(quality: float, quantized_profiles: list) -> float:
    """The share of the strongest model's quality the router must keep for the fleet to keep
    `quality`: quantized tiers answer at their published recovery (the worst one is budgeted)."""
    return min(1.0, quality / min(p.quality_recovery for p in quantized_profiles))


def _router_quality_target(args: argparse.Namespace, router, quantized_profiles: list) -> float:
    """The share of the strongest model's quality the router must keep so the whole fleet keeps
    `--target-quality`, with the artifact's cross-validated ease margin covering the
    threshold's own error on unseen prompts. Training data and model cards only; never the
    scored file's labels."""
    return _fleet_budget(args.target_quality + router.ease_margin(), quantized_profiles)


def _predicted_quality_guard(args, router, n_models: int, rows, ease: np.ndarray, predicted: np.ndarray,
                             questions, profiles, threshold: float) -> tuple[float | None, float, float]:
    """A check on the pooled threshold from the scored prompts themselves, prompts only.

    The pooled calibration prices a task by the training mix (a RouterBench arc file sent
    every prompt to Yi-34B at 0.94); the per-model heads see the prompts' own task
    (`predicted`: small, large per routing row). When they predict that `threshold` keeps
    less than target / quantized recovery of the large model's quality on the prompts as
    asked, it is raised until they predict (target + their margin) / recovery. Otherwise
    it stands: on MMLU the heads' wider margin would only cost savings the pooled
    calibration's cross-validation already vouches for. Returns (raised threshold or None,
    predicted share kept at `threshold`, the raised target)."""
    from thrifty.training.router_calibration import threshold_for_quality

    index_of = {r: i for i, r in enumerate(rows)}
    asked = np.array([index_of[q.row] for q in questions])
    e, small, large = ease[asked], predicted[asked, 0], predicted[asked, 1]
    kept = float(np.where(e >= threshold, small, large).sum() / large.sum())
    target = _fleet_budget(args.target_quality + router.margin_for(n_models), profiles)
    if kept >= _fleet_budget(args.target_quality, profiles):
        return None, kept, target
    return max(threshold, threshold_for_quality(np.column_stack([e, small, large]), target)), kept, target


def _validate(args: argparse.Namespace) -> None:
    if not 0 <= args.repeat_share < 1:
        raise ValueError("--repeat-share must be in [0, 1)")
    if not 0 <= args.exact_fraction <= 1:
        raise ValueError("--exact-fraction must be in [0, 1]")
    if args.copies < 1:
        raise ValueError("--copies must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    if args.strong_share is not None and not 0 <= args.strong_share <= 1:
        raise ValueError("--strong-share must be in [0, 1]")
    if not 0 < args.target_quality <= 1:
        raise ValueError("--target-quality must be in (0, 1]")
    if args.router_threshold is not None and not 0 <= args.router_threshold <= 1:
        raise ValueError("--router-threshold must be in [0, 1]")
    if not 0 <= args.control_share < 1:
        raise ValueError("--control-share must be in [0, 1)")
    if not 0 <= args.shadow_rate <= 1:
        raise ValueError("--shadow-rate must be in [0, 1]")
    if not 0 <= args.spec_acceptance <= 1 or args.spec_tokens < 0:
        raise ValueError("--spec-tokens must be >= 0 and --spec-acceptance in [0, 1]")


def _run(args: argparse.Namespace) -> int:
    from thrifty.bench._cost_caches import LeverSettings, run_levers
    from thrifty.bench._cost_fleet import FleetRun, FleetSettings, TierSpec, run_autoscaled, run_static_fleet
    from thrifty.bench._cost_ledger import SHADOW, draw_control, ledger, shadow_calls
    from thrifty.bench._cost_workload import build_questions, load_pairs, order_rows
    from thrifty.bench.autoscale import overlay
    from thrifty.sim.traces import load_trace, make_variant
    from thrifty.profiles import get_profile
    from thrifty.sim.model import SpeculativeSim
    from thrifty.proxy.levers.embedder import MODEL_NAME, encode_with_disk_cache, encoder_for
    from thrifty.proxy.levers.router import ARTIFACT, RouterModel, pick_tier, router_view
    from thrifty.training.labels import default_weak, load_labelled, reference_model
    from thrifty.training.router_calibration import threshold_for_quality, threshold_for_strong_share
    from thrifty.proxy.levers.verifier import ARTIFACT as VERIFIER_ARTIFACT
    from thrifty.proxy.levers.verifier import Verifier

    _validate(args)
    prices = _prices(args.gpu_hour_usd)
    not_ready: list[str] = []

    # -- inputs ---------------------------------------------------------------
    trace = load_trace(args.trace, args.limit)
    if args.variant:
        trace = make_variant(trace, args.variant, args.variant_seed)
    trace = overlay(trace, args.copies, seed=args.seed)
    data = load_labelled(args.routing)
    router_path = args.router_artifact or ARTIFACT
    router: RouterModel | None = None
    try:
        router = RouterModel.load(router_path)
    except FileNotFoundError:
        not_ready.append(f"router: no artifact at {router_path} (the levers engineer ships it); +router left out")
    mean_costs = np.nanmean(data.costs, axis=0) if data.costs is not None else None
    large = data.models.index(args.large_model) if args.large_model else reference_model(data, mean_costs)
    small = data.models.index(args.small_model) if args.small_model else default_weak(data, mean_costs)
    if small == large:
        raise ValueError("--small-model and --large-model must differ")
    usable = ~np.isnan(data.scores[:, [small, large]]).any(axis=1)
    if router is not None:
        usable &= ~router.trained_on(data.prompts)
    rows = order_rows(data.prompts, usable, args.seed, args.max_rows)
    if not rows:
        raise ValueError(f"{args.routing}: every labelled row was used to train the router; nothing unseen to score")
    verifier: Verifier | None = None
    try:
        verifier = Verifier.load(args.verifier or VERIFIER_ARTIFACT).for_encoder(args.encoder or MODEL_NAME)
    except (FileNotFoundError, ValueError) as exc:
        not_ready.append(f"semantic cache: verifier artifact unusable ({exc}); +semantic cache left out")
    seen_pairs = verifier.trained_pairs if verifier is not None else frozenset()
    pairs = load_pairs(args.cache_pairs, exclude=seen_pairs, max_pairs=args.max_pairs, seed=args.seed) \
        if args.cache_pairs else []
    repeat_share = args.repeat_share if pairs else 0.0
    questions, tenants, pairs_used = build_questions(
        trace, rows, data.prompts, pairs, repeat_share=repeat_share, exact_fraction=args.exact_fraction, seed=args.seed)

    # -- embeddings: each distinct text once per encoder --------------------------
    # The semantic cache embeds with --encoder (the sidecar's MiniLM by default); the router
    # scores with the encoder its artifact was trained on (the same one in production).
    cache_encoder_name = args.encoder or MODEL_NAME
    encoders: dict[str, object] = {}

    def embed(name: str, texts: list[str]) -> dict[str, np.ndarray]:
        print(f"embedding {len(texts)} distinct texts with {name} ...", file=sys.stderr, flush=True)
        if name not in encoders:
            encoders[name] = encoder_for(name, threads=2)
        cache_file = f"{args.embed_cache}.{name.replace(':', '-')}.npz" if args.embed_cache else None
        return dict(zip(texts, encode_with_disk_cache(encoders[name], texts, cache_file), strict=True))

    vectors = embed(cache_encoder_name, sorted({q.text for q in questions}))
    router_vectors: dict[str, np.ndarray] = {}  # keyed by router_view(prompt), what the router embeds
    if router is not None:
        row_texts = sorted({router_view(data.prompts[r]) for r in rows})
        if router.embedder == cache_encoder_name:
            missing = [t for t in row_texts if t not in vectors]
            if missing:
                vectors.update(embed(router.embedder, missing))
            router_vectors = vectors
        else:
            router_vectors = embed(router.embedder, row_texts)

    # -- engines -----------------------------------------------------------------
    def spec_for(tier: str, quantized: bool) -> TierSpec:
        if tier == LARGE:
            name = args.large_quant_profile if quantized else args.large_profile
        else:
            name = args.small_profile if quantized else args.small_base_profile
        prof = get_profile(name)
        spec = SpeculativeSim(args.spec_tokens, args.spec_acceptance) if tier == LARGE and quantized and args.spec_tokens else None
        return TierSpec(tier, prof, spec, prices.get(name, prof.gpu_hour_usd))

    # -- the router's label-free decision per routing row ----------------------------
    tier_of_row = np.ones(len(data.prompts), dtype=int)  # index into [SMALL, LARGE]: 1 = large
    threshold_source = "none"
    threshold = float("nan")
    if router is not None:
        row_vectors = np.stack([router_vectors[router_view(data.prompts[r])] for r in rows])
        ease = router.ease_scores(row_vectors, [data.prompts[r] for r in rows])
        if args.router_threshold is not None:
            threshold, threshold_source = args.router_threshold, "--router-threshold"
        elif args.strong_share is not None:
            score_of = dict(zip(rows, ease.tolist(), strict=True))
            asked = np.array([score_of[q.row] for q in questions])  # prompts only, never their labels
            threshold = threshold_for_strong_share(asked, args.strong_share)
            threshold_source = f"strong share {args.strong_share} on the scored prompts (unlabelled)"
        else:
            profiles = [spec_for(t, True).profile for t in (SMALL, LARGE)]
            router_target = _router_quality_target(args, router, profiles)
            threshold = threshold_for_quality(router.calibration, router_target)
            threshold_source = (f"quality budget: router keeps {router_target:.4f} on the artifact's out-of-fold "
                                f"training rows = ({args.target_quality} + ease margin {router.ease_margin()}) / quantized recovery")
            pair = [data.models[small], data.models[large]]
            if all(m in router.heads for m in pair):
                predicted = router.correctness(row_vectors, [data.prompts[r] for r in rows], pair)
                raised, kept, guard_target = _predicted_quality_guard(
                    args, router, len(data.models), rows, ease, predicted, questions, profiles, threshold)
                if raised is not None:
                    threshold = raised
                    threshold_source += (f"; the per-model heads predict it keeps only {kept:.4f} on the scored prompts, so "
                                         f"raised until they predict {guard_target:.4f} (+ their margin "
                                         f"{router.margin_for(len(data.models))}; unlabelled)")
        for r, score in zip(rows, ease, strict=True):
            tier_of_row[r] = 0 if pick_tier(float(score), [SMALL, LARGE], threshold) == SMALL else 1
    quality_of = np.nan_to_num(data.scores[:, [small, large]])

    # -- levers before the engines ------------------------------------------------
    arrivals = [r.arrival for r in trace]
    outputs = [r.output_tokens for r in trace]
    all_large = np.ones(len(data.prompts), dtype=int)
    lever_cache: dict[tuple[bool, bool, bool], list] = {}
    # The quality loop runs in every step with the router (the sidecar's): its control
    # group takes the baseline path and its shadow calls load the same fleet.
    control = draw_control(len(trace), args.control_share, args.seed)
    tokens = [(r.prompt_tokens, r.output_tokens) for r in trace]
    # A prompt over the engines' context is answered 400 by whichever tier it reaches (as the
    # autoscale bench's `rejected_too_long`): in no SLO or quality figure, cached by no one.
    context = min(spec_for(t, q).profile.max_model_len for t in (SMALL, LARGE) for q in (False, True))
    servable = np.array([r.prompt_tokens < context for r in trace], dtype=bool)
    online_runs: dict[tuple[bool, bool, bool], object] = {}

    def online_router():
        from thrifty.bench._cost_ledger import shadow_draws
        from thrifty.bench._cost_online import OnlineRouter
        from thrifty.config import ControllerSettings

        profiles = [spec_for(t, True).profile for t in (SMALL, LARGE)]
        return OnlineRouter(
            dict(zip(rows, ease.tolist(), strict=True)), quality_of, [SMALL, LARGE], start_threshold=threshold,
            target=_fleet_budget(args.target_quality, profiles), confidence=_QUALITY.confidence,
            shadow_rate=args.shadow_rate, draws=shadow_draws(len(trace), args.seed),
            verdict_delay_s=2 * args.store_delay_s, round_s=float(ControllerSettings().interval_s))

    def lever_key(step) -> tuple[bool, bool, bool]:
        return step.router and router is not None, step.exact, step.semantic and verifier is not None

    def outcomes_for(step) -> list:
        key = lever_key(step)
        if key not in lever_cache:
            online = online_runs[key] = online_router() if not args.offline and key[0] else None
            lever_cache[key] = run_levers(
                questions, arrivals, outputs, tier_of_row if key[0] else all_large, [SMALL, LARGE], quality_of, vectors,
                LeverSettings(exact_cache=key[1], semantic_cache=key[2], store_delay_s=args.store_delay_s),
                verifier, verifier.similarity_floor if verifier is not None else 1.0,
                control=control if step.router else None, online=online, servable=servable)
        return lever_cache[key]

    results = []
    static_counts: dict[str, int] = {}
    for step in STEPS:
        outcomes = outcomes_for(step)
        by_tier: dict[str, list[tuple[float, int, int]]] = {SMALL: [], LARGE: []}
        owners: dict[str, list[tuple[int, int]]] = {SMALL: [], LARGE: []}  # (0 | SHADOW, request index) per arrival
        for i, (o, r) in enumerate(zip(outcomes, trace, strict=True)):
            if o.tier is not None:
                by_tier[o.tier].append((r.arrival, r.prompt_tokens, r.output_tokens))
                owners[o.tier].append((0, i))
        shadows = shadow_calls(outcomes, args.shadow_rate, args.seed, SMALL, LARGE, routed=lever_key(step)[0]) \
            if step.router else []
        for i, tier in shadows:  # sent once the answer is complete (a cache hit: at once)
            r = trace[i]
            by_tier[tier].append((r.arrival + (0.0 if outcomes[i].cache else args.store_delay_s), r.prompt_tokens,
                                  r.output_tokens))
            owners[tier].append((SHADOW, i))
        specs = [spec_for(t, step.profiles) for t in (SMALL, LARGE) if by_tier[t]]
        fleet_settings = FleetSettings(balancer=step.balancer, autoscale=step.autoscale,
                                       startup_s=args.startup_s, slo_ttft_s=args.slo_ttft_s)
        # Every step is costed both ways: fixed at its own peak (whole replicas, so a lever
        # that trims 10% of a 3-replica tier's load saves nothing) and under the autoscaler
        # (which turns any load removed into GPU-hours). The step's row uses the
        # provisioning its lever set includes; the other is reported beside it.
        static = run_static_fleet(specs, by_tier, fleet_settings, static_counts or None)
        static_counts = {n: t.replicas for n, t in static.tiers.items()}
        caps = {s.name: max(4, 3 * static_counts.get(s.name, 1)) for s in specs}
        scaled = run_autoscaled(specs, by_tier, static_counts, fleet_settings, caps)
        used = scaled if step.autoscale else static
        row = _summarise(step, outcomes, used, specs, owners, args.slo_ttft_s, servable)
        row["oracle_dollars"] = _oracle_dollars(specs, by_tier)
        row["static"] = _provisioning(outcomes, static, owners, args.slo_ttft_s, servable)
        row["autoscaled"] = _provisioning(outcomes, scaled, owners, args.slo_ttft_s, servable)
        row["shadow_calls"] = len(shadows)
        if step.router:
            row["ledger"] = ledger(outcomes, tokens, owners, used, specs, LARGE, _QUALITY.confidence)
        results.append(row)
        print(f"  {step.name}: ${row['dollars']:.2f} (static peak ${static.dollars:.2f}, autoscaled ${scaled.dollars:.2f})",
              file=sys.stderr, flush=True)

    if router is None:
        results[1]["note"] = "router not ready: same as baseline routing"
    if verifier is None:
        results[3]["note"] = "verifier not ready: semantic cache off"
    report = _report(results, args, trace, questions, tenants, pairs_used, rows, data, small, large,
                     threshold, threshold_source, not_ready, spec_for)
    final_key = lever_key(STEPS[-1])  # the Thrifty row's lever set
    if online_runs.get(final_key) is not None:
        report["online"] = online_runs[final_key].summary()
        print(f"online loop (Thrifty row): {report['online']['verdicts']} verdicts, threshold {report['online']['start_threshold']} "
              f"-> {report['online']['final_threshold']} ({report['online']['threshold_changes']} changes, range "
              f"{report['online']['threshold_range']}), small share of routed {report['online']['small_share_of_routed']}",
              file=sys.stderr)
    _print_table(report)
    if args.plot:
        from thrifty.bench import plots
        plots.cost(report, args.plot)
    print(json.dumps(report))
    return 0


def _oracle_dollars(specs, by_tier: dict[str, list[tuple[float, int, int]]]) -> float:
    """The least any provisioning could spend on this step's tier loads: each minute gets the
    replicas its token rate needs at 100% of one replica's saturated throughput on the tier's own
    mix (speculation included), no start-up, perfect foresight (`bench.autoscale.trace_shape`).
    A cost goal beyond it is beyond every SLO-keeping policy on this step's levers."""
    from thrifty.bench.autoscale import trace_shape
    from thrifty.sim.fleet import TraceRequest

    total = 0.0
    for s in specs:
        load = [TraceRequest(*a) for a in sorted(by_tier[s.name])]
        total += trace_shape(load, s.profile, speculative=s.speculative).oracle_gpu_hours * s.gpu_hour_usd
    return total


def _client_slo(fleet, owners: dict, slo_ttft_s: float) -> tuple[int, int]:
    """(client requests within the TTFT SLO, client requests shed): shadow calls are not clients'."""
    within = dropped = 0
    for name, run in fleet.tiers.items():
        for s in run.served:
            if owners[name][s.tag][0] != 0:
                continue
            if s.ttft is None:
                dropped += 1
            elif s.ttft <= slo_ttft_s:
                within += 1
    return within, dropped


def _summarise(step: Step, outcomes: list, fleet, specs, owners: dict, slo_ttft_s: float,
               servable: np.ndarray) -> dict:
    total = len(outcomes)
    answered = int(servable.sum())  # the rest were rejected as too long: in no SLO or quality figure
    recovery = {s.name: s.profile.quality_recovery for s in specs}  # quantized models answer a little worse
    hits = {k: sum(1 for o in outcomes if o.cache == k) for k in ("exact", "semantic")}
    within, dropped = _client_slo(fleet, owners, slo_ttft_s)
    within += hits["exact"] + hits["semantic"]
    scored = [o.quality * recovery.get(o.source or "", 1.0) for o, ok in zip(outcomes, servable, strict=True) if ok]
    return {
        "step": step.name,
        "dollars": fleet.dollars,
        "gpu_hours": fleet.gpu_hours,
        "quality": float(np.mean(scored)) if scored else 0.0,
        "slo_attainment": within / answered if answered else 1.0,
        "rejected_too_long": total - answered,
        "dropped": dropped,
        "wrong_hits": sum(1 for o in outcomes if o.wrong_hit),
        "exact_hit_rate": hits["exact"] / total if total else 0.0,
        "semantic_hit_rate": hits["semantic"] / total if total else 0.0,
        "small_share": sum(1 for o in outcomes if o.tier == SMALL) / total if total else 0.0,
        "replicas": {n: t.replicas for n, t in fleet.tiers.items()},
        "scale_actions": sum(t.scale_actions for t in fleet.tiers.values()),
        "profiles": {s.name: s.profile.name + (f"+spec(k={s.speculative.num_tokens},a={s.speculative.acceptance_rate})" if s.speculative else "") for s in specs},
    }


def _provisioning(outcomes: list, fleet, owners: dict, slo_ttft_s: float, servable: np.ndarray) -> dict:
    """One provisioning's dollars, GPU-hours, SLO attainment and replicas (for the side columns)."""
    within, dropped = _client_slo(fleet, owners, slo_ttft_s)
    within += sum(1 for o in outcomes if o.cache is not None)
    answered = int(servable.sum())
    return {"dollars": fleet.dollars, "gpu_hours": fleet.gpu_hours,
            "slo_attainment": within / answered if answered else 1.0,
            "dropped": dropped,
            "replicas": {n: t.replicas for n, t in fleet.tiers.items()}}


def _report(results, args, trace, questions, tenants, pairs_used, rows, data, small, large, threshold,
            threshold_source, not_ready, spec_for) -> dict:
    base = results[0]
    kinds = {k: sum(1 for q in questions if q.kind == k) for k in ("fresh", "repeat", "paraphrase", "lookalike")}
    breakdown = []
    for r in results:
        breakdown.append({
            "step": r["step"],
            "dollars": round(r["dollars"], 2),
            "gpu_hours": round(r["gpu_hours"], 2),
            "cost_reduction": round(1 - r["dollars"] / base["dollars"], 4) if base["dollars"] else 0.0,
            "quality_retained": round(r["quality"] / base["quality"], 4) if base["quality"] else 0.0,
            "slo_attainment": round(r["slo_attainment"], 5),
            "dropped": r["dropped"],
            "small_share": round(r["small_share"], 4),
            "exact_hit_rate": round(r["exact_hit_rate"], 4),
            "semantic_hit_rate": round(r["semantic_hit_rate"], 4),
            "wrong_hits": r["wrong_hits"],
            "replicas": r["replicas"],
            "scale_actions": r["scale_actions"],
            "profiles": r["profiles"],
            **{kind: {"dollars": round(r[kind]["dollars"], 2), "gpu_hours": round(r[kind]["gpu_hours"], 2),
                      "cost_reduction": round(1 - r[kind]["dollars"] / base["dollars"], 4) if base["dollars"] else 0.0,
                      "slo_attainment": round(r[kind]["slo_attainment"], 5), "dropped": r[kind]["dropped"],
                      "replicas": r[kind]["replicas"]}
               for kind in ("static", "autoscaled")},
            "oracle": {"dollars": round(r["oracle_dollars"], 2),
                       "cost_reduction": round(1 - r["oracle_dollars"] / base["dollars"], 4) if base["dollars"] else 0.0},
            "shadow_calls": r["shadow_calls"],
            **({"measured_savings": r["ledger"]["measured_savings"], "measured_interval": r["ledger"]["interval"],
                "modelled_savings": r["ledger"]["modelled_savings"]} if "ledger" in r else {}),
            **({"note": r["note"]} if r.get("note") else {}),
        })
    final = breakdown[-1]
    prices = {}
    for quantized in (False, True):
        for tier in (SMALL, LARGE):
            s = spec_for(tier, quantized)
            prices[s.profile.hardware] = s.gpu_hour_usd
    return {
        "cost_reduction": final["cost_reduction"],
        "quality_retained": final["quality_retained"],
        "slo_attainment": final["slo_attainment"],
        "baseline": {"dollars": breakdown[0]["dollars"], "gpu_hours": breakdown[0]["gpu_hours"],
                     "quality": round(base["quality"], 4), "slo_attainment": breakdown[0]["slo_attainment"]},
        "thrifty": {"dollars": final["dollars"], "gpu_hours": final["gpu_hours"], "quality": round(results[-1]["quality"], 4)},
        "breakdown": breakdown,
        "workload": {
            "requests": len(trace), "duration_s": round(trace[-1].arrival, 1), "copies": args.copies,
            "trace": args.trace, "routing": args.routing, "cache_pairs": args.cache_pairs,
            "repeat_share": args.repeat_share if args.cache_pairs else 0.0, "kinds": kinds,
            "routing_rows": len(rows), "tenants": tenants, "pairs_used": pairs_used,
            "rejected_too_long": results[-1]["rejected_too_long"],
            "small_model": data.models[small], "large_model": data.models[large],
        },
        "router": {"threshold": None if threshold != threshold else round(threshold, 4), "calibration": threshold_source},
        "prices_per_gpu_hour": prices,
        "slo_ttft_s": args.slo_ttft_s,
        "ledger": _ledger_summary(results[-1].get("ledger", {}), args, final["cost_reduction"]),
        "not_ready": not_ready,
    }


def _ledger_summary(lg: dict, args: argparse.Namespace, cost_reduction: float) -> dict:
    """The Thrifty row's ledger with the headline beside it: a control group that shares the fleet
    sees the request-level levers (router, caches), not what the fleet levers save on its own tier."""
    interval = lg.get("interval")
    return {**lg, "control_share": args.control_share, "shadow_rate": args.shadow_rate,
            "cost_reduction": cost_reduction,
            "cost_reduction_inside": bool(interval and interval[0] <= cost_reduction <= interval[1])}


def _print_table(r: dict) -> None:
    w = r["workload"]
    print(f"cost bench: {w['requests']} requests over {w['duration_s']:.0f} s ({w['copies']} overlaid copies of {w['trace']}), "
          f"{w['kinds']}, {w['routing_rows']} routing rows from {w['routing']} over {w['tenants']} tenant(s); "
          f"{w['rejected_too_long']} prompts over the engines' context rejected (400, as vLLM does; in no SLO or "
          f"quality figure, never a cache hit)")
    print(f"tiers: small = {w['small_model']} labels, large = {w['large_model']} labels; router threshold "
          f"{r['router']['threshold']} ({r['router']['calibration']}); TTFT SLO {r['slo_ttft_s']} s; prices/GPU-h "
          + ", ".join(f"{k} ${v}" for k, v in r["prices_per_gpu_hour"].items()))
    print(f"{'step':<22}{'dollars':>9}{'gpu_h':>8}{'cost_red':>9}{'quality':>9}{'slo':>8}{'drop':>6}{'small%':>8}"
          f"{'exact%':>8}{'sem%':>7}{'wrong':>6}{'static':>8}{'autosc':>8}{'oracle':>8}  replicas")
    for b in r["breakdown"]:
        print(f"{b['step']:<22}{b['dollars']:>9.2f}{b['gpu_hours']:>8.2f}{b['cost_reduction']:>9.3f}{b['quality_retained']:>9.3f}"
              f"{b['slo_attainment']:>8.4f}{b['dropped']:>6}{100 * b['small_share']:>8.1f}{100 * b['exact_hit_rate']:>8.1f}"
              f"{100 * b['semantic_hit_rate']:>7.1f}{b['wrong_hits']:>6}{b['static']['cost_reduction']:>8.3f}"
              f"{b['autoscaled']['cost_reduction']:>8.3f}{b['oracle']['cost_reduction']:>8.3f}  {b['replicas']}{'  ' + b['note'] if b.get('note') else ''}")
    print("static / autosc: the step's cost_reduction with replicas fixed at its own peak / under the autoscaler "
          "(the row uses the autoscaler from '+autoscaler' on); oracle: the bound, each minute's replicas at 100% "
          "of saturated throughput, no start-up, perfect foresight")
    lg = r["ledger"]
    if lg.get("interval"):
        print(f"ledger (Thrifty row): control group {lg['control_requests']} requests ({lg['control_share']:.1%}) vs "
              f"{lg['treated_requests']} treated; measured savings {lg['measured_savings']:.3f} "
              f"[{lg['interval'][0]:.3f}, {lg['interval'][1]:.3f}] ({lg['confidence']:.0%} interval), modelled "
              f"{lg['modelled_savings']:.3f} ({'inside' if lg['agree'] else 'OUTSIDE'}); quality control "
              f"{lg['control_quality']['mean']} vs treated {lg['treated_quality']['mean']}; {lg['shadow_dollars']:.2f} $ of "
              f"shadow calls at rate {lg['shadow_rate']}. The fleet-level levers (balancer, autoscaler, quantized "
              f"profiles) lower the control group's cost too, so measured savings are those of the routing and caches "
              f"in this fleet, not the cost_reduction {lg['cost_reduction']:.3f} against the baseline fleet")
    elif lg:
        print(f"ledger (Thrifty row): {lg.get('control_requests', 0)} control requests: too few for an interval")
    for line in r["not_ready"]:
        print(f"NOT READY: {line}")
    print(f"headline: cost_reduction {r['cost_reduction']:.3f}, quality_retained {r['quality_retained']:.3f}, "
          f"slo_attainment {r['slo_attainment']:.4f} (goal >= 0.60 at >= 0.95 quality and >= 0.99 SLO); "
          f"bound on these levers (oracle): {r['breakdown'][-1]['oracle']['cost_reduction']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
