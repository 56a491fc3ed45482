"""A tier's cost index is a price mixed over input and output tokens: the bucket's output share explains it."""

from __future__ import annotations

import random

from thrifty.controller.drift import DriftMonitor

KEY = ("cost_index", "small")
# The small tier's price over the baseline's, per input and per output token (the drift bench's).
IN_RATIO, OUT_RATIO = 0.15, 0.09
BASELINE_IN, BASELINE_OUT = 1.0, 8.0  # baseline dollars per input / output token (relative)


def _bucket(rng: random.Random, minute: int, price: float = 1.0) -> dict:
    """A minute whose output share wanders in slow phases (conversations vs long prompts)."""
    phase = (minute // 7) % 2  # 7-minute stretches of output-heavy traffic
    tokens_in = 4e5 * rng.uniform(0.8, 1.2)
    tokens_out = (1.5e5 if phase else 2e4) * rng.uniform(0.8, 1.2)
    base_in, base_out = BASELINE_IN * tokens_in, BASELINE_OUT * tokens_out
    x = price * (IN_RATIO * base_in + OUT_RATIO * base_out) / (base_in + base_out) * (1 + 0.005 * rng.gauss(0, 1))
    return {KEY: x, ("requests", "small"): 200.0, ("input_tokens", "small"): tokens_in,
            ("output_tokens", "small"): tokens_out}


def test_an_output_share_that_wanders_is_not_a_cost_drift() -> None:
    # The mix moves the index ~25% between phases; a flat level over it alarmed (every seed did).
    for seed in range(5):
        rng, mon = random.Random(seed), DriftMonitor()
        raised = [a for i in range(240) for a in mon.observe(i * 60.0, _bucket(rng, i))]
        assert raised == [], (seed, [(a.signal, a.direction, a.detected_time) for a in raised])


def test_a_price_step_under_a_wandering_mix_is_caught_fast() -> None:
    for seed in range(5):
        rng, mon, caught = random.Random(seed), DriftMonitor(), None
        for i in range(60):
            got = mon.observe(i * 60.0, _bucket(rng, i, price=1.2 if i >= 29 else 1.0))
            if any(a.signal == "cost_index" and a.direction == "up" for a in got) and caught is None:
                caught = i - 29
        assert caught is not None and 0 <= caught <= 4, (seed, caught)
