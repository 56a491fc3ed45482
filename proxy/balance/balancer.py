"""Which replica of a tier answers: filters, weighted scorers, a picker.

The same class runs in the sidecar and in `thrifty bench balance`, so the bench
measures the code that serves traffic. `build_balancer(policy)` names the policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from thrifty.proxy.balance.filters import BoundedLoadFilter, Filter, HealthyFilter, NotSaturatedFilter, PickRequest
from thrifty.proxy.balance.kv_events import ReplicaKvFeed
from thrifty.proxy.balance.picker import MaxScorePicker, Picker, RoundRobinPicker
from thrifty.proxy.balance.pool import ReplicaState
from thrifty.proxy.balance.precise_scorer import PrecisePrefixScorer
from thrifty.proxy.balance.scorers import KvCacheScorer, LatencyScorer, PrefixAffinityScorer, QueueScorer, Scorer

POLICIES = ("thrifty", "least_loaded", "round_robin", "precise")


@dataclass(slots=True)
class Pick:
    replica: ReplicaState
    reason: str  # a scorer's `pick_reason` ("prefix") when its best candidate won, else "load"


class Balancer:
    def __init__(self, filters: list[Filter], scorers: list[tuple[Scorer, float]], picker: Picker) -> None:
        self.filters = filters
        self.scorers = scorers
        self.picker = picker

    def pick(self, req: PickRequest, replicas: list[ReplicaState]) -> Pick | None:
        """The replica for `req`, or None when every replica is filtered out (admission queues)."""
        candidates = replicas
        for f in self.filters:
            candidates = f.filter(req, candidates)
            if not candidates:
                return None
        reason = "load"
        if len(candidates) == 1 or not self.scorers:
            chosen = self.picker.pick(candidates, [0.0] * len(candidates))
        else:
            totals = [0.0] * len(candidates)
            named: tuple[str, list[float]] | None = None
            for scorer, weight in self.scorers:
                scores = scorer.score(req, candidates)
                if scorer.pick_reason is not None:
                    named = (scorer.pick_reason, scores)
                for i, s in enumerate(scores):
                    totals[i] += weight * s
            chosen = self.picker.pick(candidates, totals)
            if named is not None and max(named[1]) > 0:
                if named[1][candidates.index(chosen)] >= max(named[1]):
                    reason = named[0]
        for scorer, _ in self.scorers:
            scorer.picked(req, chosen)
        chosen.picks += 1
        return Pick(chosen, reason)

    def forget(self, url: str) -> None:
        """A replica went down: every scorer drops what it remembered about it."""
        for scorer, _ in self.scorers:
            scorer.forget(url)


def build_balancer(policy: str = "thrifty", *, max_waiting: float = float("inf"), max_kv: float = 1.01,
                   prefix_capacity_blocks: int = 1 << 18, epsilon: float = 2.0,
                   kv_feeds: Mapping[str, ReplicaKvFeed] | None = None) -> Balancer:
    """`thrifty`: bounded-load prefix affinity; `precise`: the same, on the engines' KV events
    (`kv_feeds`, url -> feed; approximate for replicas without one); `least_loaded`; `round_robin`."""
    healthy: list[Filter] = [HealthyFilter(), NotSaturatedFilter(max_waiting, max_kv)]
    if policy == "round_robin":
        return Balancer(healthy, [], RoundRobinPicker())
    if policy == "least_loaded":
        return Balancer(healthy, [(QueueScorer(), 1.0)], MaxScorePicker())
    if policy in ("thrifty", "precise"):
        prefix: Scorer = PrefixAffinityScorer(prefix_capacity_blocks)
        if policy == "precise":
            prefix = PrecisePrefixScorer(kv_feeds if kv_feeds is not None else {}, prefix)  # type: ignore[arg-type]
        return Balancer(
            [*healthy, BoundedLoadFilter(epsilon)],
            # The TTFB scorer weighs a quarter: at 1.0 its smoothed TTFB herded bursts onto the
            # replica that looked fastest until its average caught up (autoscale bench, 3 static
            # replicas on the dev trace: SLO 0.962 at 1.0, 0.997 at 0.25, 0.998 at 0); a quarter
            # keeps a slow replica out of the way without the herd.
            [(prefix, 4.0), (QueueScorer(), 1.0), (KvCacheScorer(), 0.5), (LatencyScorer(), 0.25)],
            MaxScorePicker(),
        )
    raise ValueError(f"unknown balancing policy {policy!r}; choose from {', '.join(POLICIES)}")
