"""Balancer filters: drop replicas that must not take the next request.

Each filter is one rule; the balancer applies them in order. A filter that would leave
nothing returns its input where that is safe (bounded load) or nothing where it is not
(health, saturation), so admission can decide to queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from thrifty.proxy.balance.pool import ReplicaState


@dataclass(slots=True)
class PickRequest:
    """What the balancer needs to know about a request."""

    blocks: tuple[int, ...] = ()  # chained prefix-block hashes
    tokens: int = 1  # estimated work (prompt + output tokens)
    exclude: frozenset[str] | set[str] = field(default_factory=frozenset)  # replicas already tried
    token_ids: tuple[int, ...] | list[int] = ()  # the prompt as the tier's engine tokenizes it (precise prefix scorer)
    pinned: str = ""  # only this replica may answer (a Responses conversation lives there)


class Filter(Protocol):
    def filter(self, req: PickRequest, replicas: list[ReplicaState]) -> list[ReplicaState]: ...


class HealthyFilter:
    """Only replicas that answer, and not one this request already failed on."""

    def filter(self, req: PickRequest, replicas: list[ReplicaState]) -> list[ReplicaState]:
        if req.pinned:
            return [r for r in replicas if r.healthy and r.url == req.pinned and r.url not in req.exclude]
        if req.exclude:
            return [r for r in replicas if r.healthy and r.url not in req.exclude]
        return [r for r in replicas if r.healthy]


class NotSaturatedFilter:
    """Replicas whose engine queue and KV cache still have room (vLLM's own gauges)."""

    def __init__(self, max_waiting: float, max_kv: float) -> None:
        self.max_waiting = max_waiting
        self.max_kv = max_kv

    def filter(self, req: PickRequest, replicas: list[ReplicaState]) -> list[ReplicaState]:
        return [
            r for r in replicas
            if r.waiting < self.max_waiting and r.kv_usage < self.max_kv and r.inflight < r.max_inflight
        ]


class BoundedLoadFilter:
    """Consistent hashing with bounded loads: no replica at or above (1+epsilon) x the mean load takes more.

    Applied before affinity scoring, it lets prefix affinity choose freely among replicas
    that are not overloaded, which keeps hit rates high without letting one hot prefix
    pile work onto one replica.
    """

    def __init__(self, epsilon: float = 2.0) -> None:
        self.epsilon = epsilon

    def filter(self, req: PickRequest, replicas: list[ReplicaState]) -> list[ReplicaState]:
        if len(replicas) < 2:
            return replicas
        total = sum(r.load for r in replicas) + req.tokens
        cap = (1.0 + self.epsilon) * total / len(replicas)
        # A replica already at or over the bound may not take more (Mirrokni et al.'s rule,
        # checked before placing): with few large requests in flight, checking after would
        # shut out the prefix owner whenever one request is big, not when it is overloaded.
        kept = [r for r in replicas if r.load < cap]
        return kept or replicas
