"""The SLO error budget as a control input: how hard the autoscaler may run its replicas.

A TTFT objective such as "99% of requests see their first token within 2 s" allows 1%
of misses. Sizing every tier so that it never misses anything spends none of that budget
and pays for it in GPU-hours; sizing it on a fixed guess of safe utilisation either
wastes capacity or blows the budget, depending on the traffic (measured:
docs/design/autoscaler.md). So the budget
is measured and spent: `SloBudget.factor` multiplies the per-replica capacity the
autoscaler plans with. While misses stay under half the budget, the factor creeps up (2%
a minute, to at most 1.5x); as soon as they burn it faster than it is earned, it falls
back to 1 within a minute or two. It never goes below 1: a capacity estimate that was too
optimistic shows up as a queue, which the autoscaler's SLO headroom rule answers at once.
This only sets how close to the edge the steady state sits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def ttft_slo_s(base_s: float, per_1k_prompt_s: float, prompt_tokens: float) -> float:
    """A request's TTFT objective: the flat SLO plus the length allowance (slo.ttft_ms_per_1k_prompt_tokens).

    Prefill time grows with the prompt, so a flat objective either excuses short prompts or
    condemns long ones; with the allowance at 0 this is the flat SLO."""
    return base_s + per_1k_prompt_s * max(0.0, prompt_tokens) / 1000.0


@dataclass(slots=True)
class SloBudget:
    """Burn-rate control of a capacity factor; feed it `observe`, read `factor`."""

    target: float = 0.99  # share of requests within the TTFT SLO
    window_s: float = 600.0  # budget burn is judged over this long
    fast_window_s: float = 60.0  # ... and over this, to react before the long window fills
    min_requests: int = 100  # fewer finished requests in the window: no judgement
    floor: float = 1.0  # never more conservative than the capacity estimate itself
    ceiling: float = 1.5
    rise_per_min: float = 0.02  # factor growth per minute while the budget is underspent
    fall_per_min: float = 0.3  # factor decay per minute while it is overspent
    factor: float = 1.0
    _samples: deque[tuple[float, int, int]] = field(default_factory=deque)  # (time, finished, missed)
    _last: float | None = None

    def observe(self, now: float, finished: int, missed: int) -> None:
        """`finished` requests got a first token (or were shed) since the last call; `missed` of them late."""
        if finished > 0:
            self._samples.append((now, finished, missed))
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        dt_min = 0.0 if self._last is None else max(0.0, now - self._last) / 60.0
        self._last = now
        slow, fast = self._burns(now)
        if (slow is not None and slow >= 1.0) or (fast is not None and fast >= 2.0):
            self.factor = max(self.floor, self.factor * (1.0 - self.fall_per_min) ** dt_min)
        elif self._underspent(slow, fast):
            self.factor = min(self.ceiling, self.factor * (1.0 + self.rise_per_min) ** dt_min)

    def overspent(self, now: float) -> bool | None:
        """Misses beyond the budget over either window; None when neither has enough requests."""
        slow, fast = self._burns(now)
        if slow is None and fast is None:
            return None
        return (slow is not None and slow >= 1.0) or (fast is not None and fast >= 1.0)

    def _burns(self, now: float) -> tuple[float | None, float | None]:
        """Burn rates over the long and the short window."""
        return self.burn_rate(now, self.window_s), self.burn_rate(now, self.fast_window_s)

    @staticmethod
    def _underspent(slow: float | None, fast: float | None) -> bool:
        """Misses under half the budget over the long window, and not beyond it over the short one."""
        return slow is not None and slow < 0.5 and (fast is None or fast < 1.0)

    def burn_rate(self, now: float, span_s: float, min_requests: int | None = None) -> float | None:
        """Miss share over the last `span_s` as a multiple of what the target allows; None with
        fewer than `min_requests` finished (default: the count the control decisions need)."""
        finished = missed = 0
        for t, f, m in reversed(self._samples):
            if t < now - span_s:
                break
            finished += f
            missed += m
        if finished < max(1, self.min_requests if min_requests is None else min_requests):
            return None
        return (missed / finished) / max(1e-9, 1.0 - self.target)
