"""Conversion between the telemetry protobuf messages and the plain dataclasses."""

from __future__ import annotations

from typing import Any

from thrifty.wire import telemetry_pb2 as pb
from thrifty.wire.quality import LedgerGroup, ShadowVerdict
from thrifty.wire.stats import Histogram, ReplicaStats, SharedCacheStats, StatsWindow, TierStats


def histogram_to_pb(h: Histogram) -> pb.Histogram:
    return pb.Histogram(bounds=list(h.bounds), counts=list(h.counts), sum=h.sum, count=h.count)


def histogram_from_pb(m: pb.Histogram) -> Histogram:
    if not m.bounds:
        return Histogram()
    counts = list(m.counts)
    if len(counts) != len(m.bounds) + 1:
        raise ValueError("histogram counts must have len(bounds) + 1 entries")
    return Histogram(bounds=tuple(m.bounds), counts=counts, sum=m.sum, count=m.count)


def shared_to_pb(s: SharedCacheStats) -> pb.SharedCacheStats:
    return pb.SharedCacheStats(up=s.up, exact_hits=s.exact_hits, semantic_hits=s.semantic_hits,
                               sync_errors=s.sync_errors, mirror_lag=histogram_to_pb(s.mirror_lag))


def shared_from_pb(m: pb.StatsWindow) -> SharedCacheStats | None:
    """None when the window carries no shared tier (the field unset)."""
    if not m.HasField("shared_cache"):
        return None
    s = m.shared_cache
    return SharedCacheStats(up=s.up, exact_hits=s.exact_hits, semantic_hits=s.semantic_hits,
                            sync_errors=s.sync_errors, mirror_lag=histogram_from_pb(s.mirror_lag))


def window_to_pb(w: StatsWindow) -> pb.StatsWindow:
    msg = pb.StatsWindow(
        seq=w.seq, window_start=w.window_start, window_end=w.window_end, catch_up=w.catch_up,
        tiers=[
            pb.TierStats(
                tier=t.tier, requests=t.requests, errors=t.errors, input_tokens=t.input_tokens,
                output_tokens=t.output_tokens, cached_tokens=t.cached_tokens, dollars=t.dollars,
                baseline_dollars=t.baseline_dollars, cache_baseline_dollars=t.cache_baseline_dollars,
                client_errors=t.client_errors, ttft=histogram_to_pb(t.ttft), itl=histogram_to_pb(t.itl),
                queue_depth=t.queue_depth, cache_exact_hits=t.cache_exact_hits,
                cache_semantic_hits=t.cache_semantic_hits, routed=t.routed,
                replicas=[
                    pb.ReplicaStats(url=r.url, healthy=r.healthy, waiting=r.waiting, running=r.running,
                                    kv_cache_usage=r.kv_cache_usage, inflight=r.inflight,
                                    spec_draft_tokens=r.spec_draft_tokens,
                                    spec_accepted_tokens=r.spec_accepted_tokens,
                                    prompt_tokens=r.prompt_tokens, generation_tokens=r.generation_tokens)
                    for r in t.replicas
                ],
            )
            for t in w.tiers
        ],
    )
    if w.shared_cache is not None:
        msg.shared_cache.CopyFrom(shared_to_pb(w.shared_cache))
    msg.verdicts.extend(pb.Verdict(kind=v.kind, cheap_tier=v.cheap_tier, reference_tier=v.reference_tier,
                                   cluster=v.cluster, ease=v.ease, score=v.score) for v in w.verdicts)
    msg.ledger.extend(pb.LedgerGroup(group=g.group, requests=g.requests, dollars=g.dollars, dollars_sq=g.dollars_sq,
                                     baseline_dollars=g.baseline_dollars, judged=g.judged, quality_sum=g.quality_sum)
                      for g in w.ledger)
    return msg


def window_from_pb(m: pb.StatsWindow) -> StatsWindow:
    return StatsWindow(
        seq=m.seq, window_start=m.window_start, window_end=m.window_end, catch_up=m.catch_up,
        tiers=[
            TierStats(
                tier=t.tier, requests=t.requests, errors=t.errors, input_tokens=t.input_tokens,
                output_tokens=t.output_tokens, cached_tokens=t.cached_tokens, dollars=t.dollars,
                baseline_dollars=t.baseline_dollars, cache_baseline_dollars=t.cache_baseline_dollars,
                client_errors=t.client_errors, ttft=histogram_from_pb(t.ttft), itl=histogram_from_pb(t.itl),
                queue_depth=t.queue_depth, cache_exact_hits=t.cache_exact_hits,
                cache_semantic_hits=t.cache_semantic_hits, routed=t.routed,
                replicas=[
                    ReplicaStats(url=r.url, healthy=r.healthy, waiting=r.waiting, running=r.running,
                                 kv_cache_usage=r.kv_cache_usage, inflight=r.inflight,
                                 spec_draft_tokens=r.spec_draft_tokens, spec_accepted_tokens=r.spec_accepted_tokens,
                                 prompt_tokens=r.prompt_tokens if r.HasField("prompt_tokens") else None,
                                 generation_tokens=r.generation_tokens if r.HasField("generation_tokens") else None)
                    for r in t.replicas
                ],
            )
            for t in m.tiers
        ],
        shared_cache=shared_from_pb(m),
        verdicts=[ShadowVerdict(v.kind, v.cheap_tier, v.reference_tier, v.cluster, v.ease, v.score) for v in m.verdicts],
        ledger=[LedgerGroup(g.group, g.requests, g.dollars, g.dollars_sq, g.baseline_dollars, g.judged, g.quality_sum)
                for g in m.ledger],
    )


def policy_to_pb(policy: dict[str, Any]) -> pb.Policy:
    msg = pb.Policy(version=int(policy.get("version", 0)), cache_enabled=bool(policy.get("cache_enabled", True)))
    if policy.get("router_threshold") is not None:
        msg.router_threshold = float(policy["router_threshold"])
    for tier, replicas in (policy.get("tier_targets") or {}).items():
        msg.tier_targets[tier].replicas = int(replicas)
    for cluster, threshold in (policy.get("router_cluster_thresholds") or {}).items():
        msg.router_cluster_thresholds[int(cluster)] = float(threshold)
    return msg


def policy_from_pb(m: pb.Policy) -> dict[str, Any]:
    """The dict handed to the sidecar's `on_policy` (docs/contracts.md)."""
    return {
        "version": m.version,
        "router_threshold": m.router_threshold if m.HasField("router_threshold") else None,
        "cache_enabled": m.cache_enabled,
        "tier_targets": {k: v.replicas for k, v in m.tier_targets.items()},
        "router_cluster_thresholds": dict(m.router_cluster_thresholds),
    }
