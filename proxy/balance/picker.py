"""Balancer pickers: turn weighted scores into one replica."""

from __future__ import annotations

from typing import Protocol

from thrifty.proxy.balance.pool import ReplicaState


class Picker(Protocol):
    def pick(self, replicas: list[ReplicaState], scores: list[float]) -> ReplicaState: ...


class MaxScorePicker:
    """Highest score wins; ties rotate so equal replicas share the work."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: list[ReplicaState], scores: list[float]) -> ReplicaState:
        best = max(scores)
        tied = [r for r, s in zip(replicas, scores) if s >= best - 1e-9]
        self._turn += 1
        return tied[self._turn % len(tied)]


class RoundRobinPicker:
    """Ignore scores: each replica in turn (the baseline policy)."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, replicas: list[ReplicaState], scores: list[float]) -> ReplicaState:
        self._turn += 1
        return replicas[self._turn % len(replicas)]
