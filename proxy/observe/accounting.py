"""What each request cost, and what it would have cost on the baseline tier without caches.

API tiers are priced per token. A self-hosted tier costs GPU dollars per hour per
replica; spread over the tokens it actually serves, a token costs
`gpu_hour x gpus_per_replica / 3600 / tokens_per_s_per_replica`. The throughput is
measured from this sidecar's own traffic (1 s buckets, the best 60 s window seen, so an
idle minute does not make tokens look expensive), starting from a nominal figure
until enough traffic has been seen.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from thrifty.config import Config, Tier, baseline_tier

DEFAULT_NOMINAL_TOKENS_PER_S = 1000.0
WINDOW_S = 60


@dataclass(slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cached: int = 0

    @classmethod
    def from_body(cls, usage: object) -> "Usage | None":
        if not isinstance(usage, dict):
            return None
        if "input_tokens" in usage:  # the Responses API's names
            details = usage.get("input_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            return cls(input=int(usage.get("input_tokens") or 0), output=int(usage.get("output_tokens") or 0),
                       cached=int(cached or 0))
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return cls(
            input=int(usage.get("prompt_tokens") or 0),
            output=int(usage.get("completion_tokens") or 0),
            cached=int(cached or 0),
        )


class ThroughputMeter:
    """Tokens per second per replica of one tier: the best full window seen so far."""

    def __init__(self, nominal_tokens_per_s: float) -> None:
        self.nominal = nominal_tokens_per_s
        self.best = 0.0
        self._buckets: deque[tuple[int, int]] = deque()  # (second, tokens)
        self._sum = 0

    def record(self, tokens: int, replicas: int, now: float | None = None) -> None:
        second = int(now if now is not None else time.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            s, t = self._buckets[-1]
            self._buckets[-1] = (s, t + tokens)
        else:
            self._buckets.append((second, tokens))
        self._sum += tokens
        while self._buckets and self._buckets[0][0] <= second - WINDOW_S:
            self._sum -= self._buckets.popleft()[1]
        if self._buckets[0][0] <= second - WINDOW_S + 1:  # a full window of history
            self.best = max(self.best, self._sum / WINDOW_S / max(replicas, 1))

    def tokens_per_s(self) -> float:
        return max(self.best, self.nominal)


class CostModel:
    def __init__(self, config: Config, *, nominal_tokens_per_s: float = DEFAULT_NOMINAL_TOKENS_PER_S,
                 replicas: dict[str, int] | None = None) -> None:
        self.tiers = {t.name: t for t in config.tiers}
        self.baseline = baseline_tier(config)
        self.replicas = replicas or {}
        self.meters = {t.name: ThroughputMeter(nominal_tokens_per_s) for t in config.tiers if t.price.self_hosted}

    def record_throughput(self, tier: str, usage: Usage) -> None:
        meter = self.meters.get(tier)
        if meter is not None:
            meter.record(usage.input - usage.cached + usage.output, self.replicas.get(tier, 1))

    def dollars(self, tier: Tier, usage: Usage) -> float:
        p = tier.price
        if p.self_hosted:
            per_token = (p.gpu_hour or 0.0) * p.gpus_per_replica / 3600.0 / self.meters[tier.name].tokens_per_s()
            # Prefix-cached prompt tokens cost no prefill compute.
            return per_token * (usage.input - usage.cached + usage.output)
        cached_price = p.cached_input_per_1m if p.cached_input_per_1m is not None else p.input_per_1m
        return ((usage.input - usage.cached) * (p.input_per_1m or 0.0) + usage.cached * (cached_price or 0.0)
                + usage.output * (p.output_per_1m or 0.0)) / 1e6

    def cost(self, tier_name: str, usage: Usage, cache_hit: bool) -> tuple[float, float]:
        """(actual dollars, baseline dollars) for one request; a cache hit costs nothing."""
        actual = 0.0 if cache_hit else self.dollars(self.tiers[tier_name], usage)
        baseline = self.dollars(self.baseline, Usage(usage.input, usage.output, 0))
        return actual, baseline
