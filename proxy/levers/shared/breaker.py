"""Circuit breaker for the shared tier: after a few failures in a row, stop calling Redis
for a cool-down, so a down or slow server costs requests nothing beyond one short timeout.

Closed: calls go through. `failures` consecutive failures open it for `cooldown_s`; then
one probe call is let through (half-open): success closes it, failure re-opens it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 2.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failed = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def closed(self) -> bool:
        return self._failed < self.failures

    def allow(self) -> bool:
        """May a call go out now? (In half-open, only one probe at a time.)"""
        if self.closed:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failed = 0
        self._probing = False

    def failure(self) -> None:
        self._failed += 1
        self._probing = False
        if self._failed >= self.failures:
            self._open_until = self._clock() + self.cooldown_s
