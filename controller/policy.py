"""Each tier's autoscaling policy, from the config (+ the tier's performance profile).

The one factory: `thrifty controller` and every bench (`bench autoscale`, `bench cost`)
build their `TierPolicy`s here, so a bench measures the policy production runs; a knob a
bench needs is a config field (docs/operators.md). Target concurrency is the batch one
replica holds: `max_num_seqs`, fewer where the KV cache fills first at the prior's
2048-token contexts, and fewer again where a larger decode step would break the ITL SLO
(a step's time is the inter-token latency of every sequence in it). The capacity prior is
the profile's per-token engine time at that batch; without a profile there is none and
capacity is learned from served tokens.
"""

from __future__ import annotations

from thrifty.config import Config, Tier
from thrifty.controller.autoscaler import TierPolicy
from thrifty.profiles import PRIOR_CONTEXT_TOKENS, GpuProfile, engine_costs, get_profile


def target_batch(max_num_seqs: int, profile: GpuProfile | None, itl_slo_s: float) -> int:
    """Sequences one replica should hold: the engine's limit, the KV cache's, and the largest
    batch whose decode step meets the ITL SLO (unless even one sequence misses it: then
    more replicas cannot help ITL and the batch is not cut)."""
    if profile is None:
        return max_num_seqs
    full = max(1, min(max_num_seqs, profile.kv_tokens // PRIOR_CONTEXT_TOKENS))
    step = lambda b: profile.decode_step_time(b, b * PRIOR_CONTEXT_TOKENS)  # noqa: E731
    if step(1) > itl_slo_s:
        return full
    lo, hi = 1, full  # step time grows with the batch: bisect for the largest within the SLO
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if step(mid) <= itl_slo_s else (lo, mid - 1)
    return lo


def tier_policy(config: Config, tier: Tier) -> TierPolicy:
    name = tier.engine.prior_profile()
    profile = get_profile(name) if name else None
    batch = target_batch(tier.engine.max_num_seqs, profile, config.slo.itl_p95_ms / 1000)
    costs = engine_costs(profile, batch=batch, context=PRIOR_CONTEXT_TOKENS) if profile else {}
    return TierPolicy(
        name=tier.name, min_replicas=tier.replicas.min, max_replicas=tier.replicas.max,
        scale_to_zero=tier.replicas.scale_to_zero, startup_s=tier.replicas.startup_s,
        target_concurrency=float(batch), slo_ttft_s=config.slo.ttft_p95_ms / 1000,
        slo_target=config.slo.ttft_attainment, target_utilization=config.autoscaler.target_utilization,
        slo_ttft_per_1k_prompt_s=config.slo.ttft_ms_per_1k_prompt_tokens / 1000, **costs,
    )


def tier_policies(config: Config) -> list[TierPolicy]:
    """One policy per tier, in config order."""
    return [tier_policy(config, t) for t in config.tiers]
