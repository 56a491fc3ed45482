"""Semantic-cache watch: judged semantic hits give a false-hit rate with bounds; a confident miss
of the precision target raises the similarity floor.

Applied locally in the sidecar (each pod watches its own hits; the floor is per process),
because the floor is a property of this pod's cache and needs no fleet consensus. A false hit
is a verdict scoring below 0.5. When the upper bound of precision (1 - the false-hit rate's
lower bound) falls below `cache_watch.precision_target` with at least `min_samples` verdicts,
the floor rises by `step` (capped at `max_floor`) and the evidence starts over, since it
described the old floor.
"""

from __future__ import annotations

from typing import Any

from thrifty.config import CacheWatchSettings
from thrifty.wire.quality import wilson


class CacheWatch:
    def __init__(self, settings: CacheWatchSettings, semantic: Any | None) -> None:
        self.settings = settings
        self.semantic = semantic  # the levers' SemanticCache (has `similarity_floor`), or None
        self.judged: dict[str, int] = {}  # per route (the tier asked for)
        self.false: dict[str, float] = {}
        self.raised = 0

    @property
    def floor(self) -> float | None:
        return getattr(self.semantic, "similarity_floor", None)

    def observe(self, route: str, score: float) -> None:
        self.judged[route] = self.judged.get(route, 0) + 1
        self.false[route] = self.false.get(route, 0.0) + (1.0 if score < 0.5 else 0.0)
        s = self.settings
        lower, _ = self.bounds(route)
        if self.judged[route] >= s.min_samples and 1 - lower < s.precision_target and self.semantic is not None:
            floor = self.semantic.similarity_floor
            if floor < s.max_floor:
                self.semantic.similarity_floor = min(s.max_floor, floor + s.step)
                self.raised += 1
            self.judged[route], self.false[route] = 0, 0.0

    def bounds(self, route: str) -> tuple[float, float]:
        return wilson(self.false.get(route, 0.0), self.judged.get(route, 0), self.settings.confidence)

    def gauges(self) -> list[tuple[list[str], float]]:
        out = []
        for route, n in self.judged.items():
            lo, hi = self.bounds(route)
            rate = self.false[route] / n if n else 0.0
            out += [([route, "mean"], rate), ([route, "lower"], lo), ([route, "upper"], hi)]
        return out
