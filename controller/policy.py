"""Each tier's autoscaling policy, from the config (+ the tier's performance profile).

The one factory: `thrifty controller` and every bench (`bench autoscale`, `bench cost`)
build their `TierPolicy`s here, so a bench measures the policy production runs; a knob a
bench needs is a config field (docs/operators.md). Target concurrency is the batch one
replica holds: `max_num_seqs`, fewer where a larger decode step would break the ITL SLO
(a step's time is the inter-token latency of every sequence in it); memory is the KV
floor's, from the measured cache fill. The capacity prior is the profile's per-token
engine time at that batch, fewer where the KV cache fills first at the prior's
2048-token contexts, with the tier's speculative decoding
(drafts per step and the configured expected acceptance); without a profile there is none
and capacity is learned from served tokens.
"""

from __future__ import annotations

from thrifty.config import Config, Tier
from thrifty.controller.autoscaler import TierPolicy
from thrifty.profiles import PRIOR_CONTEXT_TOKENS, GpuProfile, decode_step_s, engine_costs, get_profile


def target_batch(max_num_seqs: int, profile: GpuProfile | None, itl_slo_s: float,
                 speculative: tuple[int, float] | None = None, *, kv_bound: bool = True) -> int:
    """Sequences one replica should hold: the engine's limit, the KV cache's at the prior's
    2048-token contexts (`kv_bound`), and the largest batch whose inter-token latency (a
    decode step over the tokens it emits per sequence) meets the ITL SLO (unless even one
    sequence misses it: then more replicas cannot help ITL and the batch is not cut)."""
    if profile is None:
        return max_num_seqs
    full = max(1, min(max_num_seqs, profile.kv_tokens // PRIOR_CONTEXT_TOKENS if kv_bound else max_num_seqs))

    def step(b: int) -> float:
        seconds, emitted = decode_step_s(profile, b, PRIOR_CONTEXT_TOKENS, speculative)
        return seconds / emitted

    if step(1) > itl_slo_s:
        return full
    lo, hi = 1, full  # step time grows with the batch: bisect for the largest within the SLO
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if step(mid) <= itl_slo_s else (lo, mid - 1)
    return lo


def tier_policy(config: Config, tier: Tier) -> TierPolicy:
    """The capacity prior's batch is KV-bound (a replica cannot run more 2048-token sequences
    than its cache holds); the concurrency floor's is not: the KV floor reads the cache's
    measured fill, and an assumed context there would count memory twice (measured:
    docs/design/autoscaler.md, "Floors and the SLO headroom rule")."""
    name = tier.engine.prior_profile()
    profile = get_profile(name) if name else None
    spec = tier.engine.speculative
    drafts = (spec.num_speculative_tokens, spec.acceptance_rate) if spec else None
    itl_slo_s = config.slo.itl_p95_ms / 1000
    batch = target_batch(tier.engine.max_num_seqs, profile, itl_slo_s, drafts)
    costs = engine_costs(profile, batch=batch, context=PRIOR_CONTEXT_TOKENS, speculative=drafts) if profile else {}
    if profile and drafts:  # the prefill queue sees the verify steps' width (TierPolicy.ttft_decode_s_per_token)
        costs["ttft_decode_s_per_token"] = engine_costs(profile, batch=batch, context=PRIOR_CONTEXT_TOKENS)["decode_s_per_token"]
    concurrency = target_batch(tier.engine.max_num_seqs, profile, itl_slo_s, drafts, kv_bound=False)
    return TierPolicy(
        name=tier.name, min_replicas=tier.replicas.min, max_replicas=tier.replicas.max,
        scale_to_zero=tier.replicas.scale_to_zero, startup_s=tier.replicas.startup_s,
        target_concurrency=float(concurrency), slo_ttft_s=config.slo.ttft_p95_ms / 1000,
        slo_target=config.slo.ttft_attainment, target_utilization=config.autoscaler.target_utilization,
        slo_ttft_per_1k_prompt_s=config.slo.ttft_ms_per_1k_prompt_tokens / 1000, **costs,
    )


def tier_policies(config: Config) -> list[TierPolicy]:
    """One policy per tier, in config order."""
    return [tier_policy(config, t) for t in config.tiers]
