"""Latency convex in load (a tier near saturation): the load model has a square term, so it is not drift."""

from __future__ import annotations

import random

from thrifty.controller.drift import DriftMonitor, load_features
from thrifty.controller.drift_detectors import RollingBaseline

KEY = ("itl_mean", "small")


def _convex_day(seed: int, minutes: int, features=None, step_at: int | None = None) -> list[int]:
    """Alarm minutes on ITL that grows with the square of the prompt-token load (0.019 s at 800k
    tokens a minute, ~0.045 s at 1700k, as on the near-saturated tier), optionally a +30% step."""
    import thrifty.controller.drift as drift

    saved = drift.load_features
    if features is not None:
        drift.load_features = features
    try:
        rng, mon, alarms = random.Random(seed), DriftMonitor(), []
        for i in range(minutes):
            # prompt tokens a minute: 20-minute stretches at a level drawn from 700k-1800k (a load
            # persists for minutes, so a misfit there does too)
            if i % 20 == 0:
                level = rng.uniform(700e3, 1800e3)
            tokens = level * rng.uniform(0.95, 1.05)
            k = tokens / 1e3
            value = 0.012 + 1.1e-8 * k * k
            value *= 1.0 + 0.03 * rng.gauss(0, 1)
            if step_at is not None and i >= step_at:
                value *= 1.3
            ctx = {("requests", "small"): 300.0, ("input_tokens", "small"): tokens,
                   ("output_tokens", "small"): 0.25 * tokens * rng.uniform(0.9, 1.1)}
            if mon.observe(i * 60.0, {KEY: value, **ctx}):
                alarms.append(i)
        return alarms
    finally:
        drift.load_features = saved


def test_load_features_add_the_input_square() -> None:
    assert load_features((2000.0, 300.0)) == (2000.0, 300.0, 4000.0)


def test_convex_latency_is_explained_by_the_square_not_read_as_drift() -> None:
    # With the linear model alone the one slope misfits the top and the middle of the load range
    # and the series alarms; with the square term it does not.
    linear = sum(len(_convex_day(seed, 600, features=lambda f: f)) for seed in range(10))
    convex = sum(len(_convex_day(seed, 600)) for seed in range(10))
    assert convex == 0
    assert linear > convex


def test_a_step_on_convex_latency_is_still_caught() -> None:
    caught = [a for a in _convex_day(7, 60, step_at=29) if a >= 29]
    assert caught and caught[0] - 29 <= 5, caught


def test_a_quiet_bucket_after_half_an_hour_of_busy_ones_is_not_held_to_the_busy_level() -> None:
    # The "no prediction below every value" floor was the 30-value window's minimum: after 30+
    # busy buckets that is a busy value, and the first quiet bucket read as a fall. The floor is
    # the fit's whole history now, which holds the quiet buckets too.
    b = RollingBaseline(early_fit=True, lag=0)
    rng = random.Random(3)
    for i in range(120):
        k = (800.0 if i < 60 else 1700.0) * rng.uniform(0.9, 1.1)
        b.push(0.005 + 2e-5 * k + 1e-4 * rng.gauss(0, 1), 0.0, load_features((k, k * rng.uniform(0.2, 0.3))))
    quiet = load_features((800.0, 200.0))
    assert abs(b.center(quiet) - 0.021) < 0.001, b.center(quiet)
