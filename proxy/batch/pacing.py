"""How much batch work the sidecar may run now: AIMD on what interactive requests feel.

The batch lane waits behind interactive requests in admission, but once a batch line
is on a replica it shares the engine's batch and prefill budget with them. So the runner's
concurrency limit follows the interactive latency the sidecar measures itself: every
`window_s`, if an interactive request (any lane but `batch`) waited in admission or took
longer than `slow_fraction` of the TTFT SLO to its first byte, the limit halves;
otherwise it grows by one, up to the configured maximum. Batch work fills troughs and
gets out of the way of bursts within a window or two, without a threshold fitted to a
trace: the SLO is the operator's, and the halving/adding is the classic AIMD.
"""

from __future__ import annotations

import time


class InteractivePressure:
    """Counts the interactive requests that finished slow or queued, per window."""

    def __init__(self, ttft_slo_s: float, *, slow_fraction: float = 0.5) -> None:
        self.slow_after_s = ttft_slo_s * slow_fraction
        self.slow = 0
        self.finished = 0

    def observe(self, ttft_s: float | None, queued: bool) -> None:
        self.finished += 1
        if queued or (ttft_s is not None and ttft_s > self.slow_after_s):
            self.slow += 1

    def take(self) -> tuple[int, int]:
        """(slow, finished) since the last call."""
        out = (self.slow, self.finished)
        self.slow = self.finished = 0
        return out


class AimdLimit:
    """The batch runner's concurrency limit: +1 per calm window, halved per window with pressure."""

    def __init__(self, maximum: int, *, window_s: float = 1.0, start: int = 1) -> None:
        self.maximum = maximum
        self.window_s = window_s
        self.value = max(1, min(start, maximum))
        self._next = time.monotonic() + window_s

    def update(self, pressure: InteractivePressure, *, queued: bool) -> int:
        now = time.monotonic()
        if queued:  # requests wait for a replica right now: back off at once
            self.value = max(1, self.value // 2)
            pressure.take()
            self._next = now + self.window_s
        elif now >= self._next:
            slow, _ = pressure.take()
            self.value = max(1, self.value // 2) if slow else min(self.maximum, self.value + 1)
            self._next = now + self.window_s
        return self.value
