"""Balancer scorers: each rates candidates in [0, 1] on one concern; the balancer weighs them."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.pool import ReplicaState


class Scorer(Protocol):
    name: str
    pick_reason: str | None  # the `Pick.reason` when this scorer's best candidate won (None: never named)

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]: ...

    def picked(self, req: PickRequest, replica: ReplicaState) -> None: ...

    def forget(self, url: str) -> None:
        """Drop what the scorer remembers about a replica that went down."""


class PrefixAffinityScorer:
    """Share of the request's leading prefix blocks the replica most likely still caches.

    The sidecar cannot see inside the engine's prefix cache, so it keeps its own model of
    it: per replica, an LRU of the block hashes it sent there, bounded like the engine's
    cache (`capacity_blocks`). A replica scores by how many leading blocks it holds.
    """

    name = "prefix"
    pick_reason: str | None = "prefix"

    def __init__(self, capacity_blocks: int = 1 << 18) -> None:
        self.capacity_blocks = capacity_blocks
        self._held: dict[str, OrderedDict[int, None]] = {}

    def matched_blocks(self, replica: ReplicaState, blocks: tuple[int, ...]) -> int:
        held = self._held.get(replica.url)
        if not held:
            return 0
        n = 0
        for h in blocks:
            if h not in held:
                break
            n += 1
        return n

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]:
        if not req.blocks:
            return [0.0] * len(replicas)
        total = len(req.blocks)
        return [self.matched_blocks(r, req.blocks) / total for r in replicas]

    def picked(self, req: PickRequest, replica: ReplicaState) -> None:
        held = self._held.setdefault(replica.url, OrderedDict())
        for h in req.blocks:
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
        while len(held) > self.capacity_blocks:
            held.popitem(last=False)

    def forget(self, url: str) -> None:
        """A replica that went down lost its cache (or will be replaced)."""
        self._held.pop(url, None)


class QueueScorer:
    """Less outstanding work scores higher (sidecar's open tokens plus the engine's queue)."""

    name = "queue"
    pick_reason: str | None = None

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]:
        loads = [r.load for r in replicas]
        top = max(loads)
        if top <= 0:
            return [1.0] * len(replicas)
        return [1.0 - load / top for load in loads]

    def picked(self, req: PickRequest, replica: ReplicaState) -> None:
        return None

    def forget(self, url: str) -> None:
        return None


class KvCacheScorer:
    """More free KV cache scores higher (`vllm:kv_cache_usage_perc`)."""

    name = "kv"
    pick_reason: str | None = None

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]:
        return [1.0 - min(max(r.kv_usage, 0.0), 1.0) for r in replicas]

    def picked(self, req: PickRequest, replica: ReplicaState) -> None:
        return None

    def forget(self, url: str) -> None:
        return None


class LatencyScorer:
    """Faster replicas (smoothed time to first byte) score higher; unmeasured ones count as fast."""

    name = "latency"
    pick_reason: str | None = None

    def score(self, req: PickRequest, replicas: list[ReplicaState]) -> list[float]:
        measured = [r.ttfb_ewma_s for r in replicas if r.ttfb_ewma_s > 0]
        if not measured:
            return [1.0] * len(replicas)
        best = min(measured)
        return [1.0 if r.ttfb_ewma_s <= 0 else best / r.ttfb_ewma_s for r in replicas]

    def picked(self, req: PickRequest, replica: ReplicaState) -> None:
        return None

    def forget(self, url: str) -> None:
        return None
