"""Hit rates are floored at their binomial noise and sized relative to their own rate."""

from __future__ import annotations

import random

from thrifty.controller.drift import SIGNALS, DriftMonitor

KEY = ("cache_hit_rate_semantic", None)


def _collapse(rate: float, seed: int, n: int = 200, at: int = 29, minutes: int = 45) -> int | None:
    """Minutes from a collapse of the hit rate to a fifth (at `at`) to its alert; None if none."""
    rng, mon = random.Random(seed), DriftMonitor()
    for i in range(minutes):
        p = rate / 5 if i >= at else rate
        hits = sum(1 for _ in range(n) if rng.random() < p)
        for a in mon.observe(i * 60.0, {KEY: hits / n, ("requests", None): n}):
            if a.signal == KEY[0] and i >= at:
                return i - at
    return None


def test_a_collapse_of_a_low_hit_rate_is_caught_fast() -> None:
    # 3% of 200 requests a minute (the prefill-heavy Mooncake replay, where most prompts exceed
    # the context and cannot hit): under the old fixed floor (0.03) and absolute minimum effect
    # (0.05) the drop to 0.6% was never reported. The drop is ~2 binomial sigmas, so CUSUM
    # (k = 1, h ~ 5.6) needs about six buckets: the noise's bound, not the floor's.
    delays = [_collapse(0.03, seed) for seed in range(5)]
    assert all(d is not None and d <= 8 for d in delays), delays
    # at the 15% rate the floor was sized for it is as fast as before (~3 buckets)
    assert all((d := _collapse(0.15, seed)) is not None and d <= 4 for seed in range(5))


def test_a_steady_hit_rate_raises_nothing_in_a_day() -> None:
    rng, mon, raised = random.Random(2), DriftMonitor(), []
    for i in range(1440):
        hits = sum(1 for _ in range(200) if rng.random() < 0.08)
        raised += mon.observe(i * 60.0, {KEY: hits / 200, ("requests", None): 200})
    assert raised == []


def test_hit_rates_are_binomial_and_relative() -> None:
    for name in ("cache_hit_rate_exact", "cache_hit_rate_semantic"):
        assert SIGNALS[name].binomial and SIGNALS[name].relative
