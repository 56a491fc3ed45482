"""What the autoscaler plans with: the arrival-rate forecast and each replica's capacity.

Contract: `HoltForecast.forecast(h)` is the token arrival rate h seconds ahead;
`CapacityEstimator.capacity(prior)` is one replica's sustained tokens/s, learned from the
tier's own telemetry over the profile's prior. Why learned: a replica's capacity depends on
the current prompt/output mix, which no fixed profile knows (docs/design/autoscaler.md).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thrifty.controller.autoscaler import TierObservation


class HoltForecast:
    """Holt's double exponential smoothing; `forecast(h)` is h seconds ahead."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.05) -> None:
        # Fed every few seconds with a rate over a ~30 s window: a slow trend term keeps
        # sampling noise, multiplied by a 90 s horizon, from reading as growth.
        self.alpha, self.beta = alpha, beta
        self.level: float | None = None
        self.trend = 0.0  # per second
        self.last_t = 0.0
        self.first_t = 0.0

    def update(self, t: float, x: float) -> None:
        if self.level is None:
            self.level, self.last_t, self.first_t = x, t, t
            return
        dt = max(t - self.last_t, 1e-9)
        prev = self.level
        self.level = self.alpha * x + (1 - self.alpha) * (self.level + self.trend * dt)
        self.trend = self.beta * (self.level - prev) / dt + (1 - self.beta) * self.trend
        self.last_t = t

    def forecast(self, horizon_s: float) -> float:
        """Level plus trend; a trend seen over less than the horizon is extrapolated only as
        far as it was seen (a few samples after start-up are no basis for a 90 s projection)."""
        if self.level is None:
            return 0.0
        reach = min(horizon_s, self.last_t - self.first_t)
        return max(0.0, self.level + self.trend * reach)


class CapacityEstimator:
    """Tokens/s one replica of a tier serves, learned from its own telemetry.

    Samples are per-replica served tokens/s averaged over `sample_s` (bursts shorter than
    that say nothing about sustained capacity), over windows in which the ready count did
    not change: a replica that has just become ready, or is draining, serves less than a
    full one and would drag the per-replica figure down (then the fleet grows, the new
    replicas look slow again, and the estimate spirals down). A sample taken while every
    replica had a queue the whole time (engine waiting at least one per ready replica, or
    requests held in the sidecar's admission queue) is the replica's capacity at the
    current mix: the estimate moves toward it, down as well as up; one replica queueing
    behind a long prompt while the others idle says nothing about the tier's capacity. A sample
    taken while everything was served within the SLO only proves capacity is at least that;
    such proofs are remembered for `memory_s` (the mix drifts) and one above a later
    saturated measurement is dropped. Before any measurement the prior stands.
    """

    def __init__(self, sample_s: float = 30.0, smoothing: float = 0.3, memory_s: float = 1800.0) -> None:
        self.sample_s, self.smoothing, self.memory_s = sample_s, smoothing, memory_s
        self.measured: float | None = None  # EWMA of saturated samples
        self._proven: deque[tuple[float, float]] = deque()  # (time, tokens/s served within the SLO)
        self._window: deque[tuple[float, float, bool]] = deque()  # (time, per-replica tokens/s, queued)
        self._window_ready = 0  # the ready count the current window was taken at

    def observe(self, now: float, o: TierObservation, slo_ttft_s: float) -> None:
        if o.served_token_rate is None or o.ready <= 0:
            self._window.clear()
            self._window_ready = 0
            return
        if o.ready != self._window_ready:  # the fleet changed: start a new window
            self._window.clear()
            self._window_ready = o.ready
        every_replica_queued = o.waiting >= o.ready or o.queue_depth > 0
        self._window.append((now, o.served_token_rate / o.ready, every_replica_queued))
        if now - self._window[0][0] < self.sample_s:
            return
        sustained = sum(r for _, r, _ in self._window) / len(self._window)
        saturated = all(q for _, _, q in self._window)
        within_slo = o.ttft_p95_s is None or o.ttft_p95_s <= slo_ttft_s
        self._window.clear()
        while self._proven and self._proven[0][0] < now - self.memory_s:
            self._proven.popleft()
        if saturated:
            prev = sustained if self.measured is None else self.measured
            self.measured = prev + self.smoothing * (sustained - prev)
            self._proven = deque(p for p in self._proven if p[1] <= sustained)
        elif within_slo:
            self._proven.append((now, sustained))

    def proven(self) -> float:
        return max((r for _, r in self._proven), default=0.0)

    def capacity(self, prior: float) -> float:
        base = self.measured if self.measured is not None else prior
        return max(base, self.proven())
