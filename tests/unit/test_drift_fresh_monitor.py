"""A fresh drift monitor's first hour: the load model is fitted from the warm-up on, only where it predicts."""

from __future__ import annotations

import random

from thrifty.controller.drift import DriftMonitor
from thrifty.controller.drift_detectors import RollingBaseline, SignalSpec, _ols_fit

KEY = ("itl_mean", "small")
SPEC = SignalSpec("x", 0.0, 0.0, 0.0)


def _ctx(n: float, tokens_in: float, tokens_out: float) -> dict:
    return {("requests", "small"): n, ("input_tokens", "small"): tokens_in, ("output_tokens", "small"): tokens_out}


def _bursty_latency(seed: int, minutes: int, with_context: bool = True) -> int:
    """ITL that follows a bursty (two-level) load, as in the bursty variant: alarms raised."""
    rng, mon, alarms = random.Random(seed), DriftMonitor(), 0
    for i in range(minutes):
        load = 4.0 if rng.random() < 0.3 else 1.0  # hot slots carry ~4x the tokens
        value = 0.012 + 0.0015 * (load - 1.0) + 0.0003 * rng.gauss(0, 1)
        ctx = _ctx(100 * load, 1e5 * load * rng.uniform(0.8, 1.2), 2e4 * load * rng.uniform(0.8, 1.2)) if with_context else {}
        alarms += len(mon.observe(i * 60.0, {KEY: value, **ctx}))
    return alarms


def test_fresh_monitor_explains_bursty_load_from_its_warm_up() -> None:
    # Before: the first 30 buckets' baseline was the median of a two-level series (it flipped
    # between the levels) and the first burst after warm-up alarmed; now the warm-up's own
    # load fit explains it. Without the load as context the same series still alarms.
    assert sum(_bursty_latency(seed, 60) for seed in range(10)) == 0
    assert sum(_bursty_latency(seed, 60, with_context=False) for seed in range(10)) > 0


def test_step_on_a_fresh_monitor_is_still_caught_fast() -> None:
    # A +30% step at minute 29 (the bench's injection point) on a load-driven series.
    rng, mon, caught = random.Random(5), DriftMonitor(), None
    for i in range(45):
        load = 4.0 if rng.random() < 0.3 else 1.0
        value = (0.012 + 0.0015 * (load - 1.0) + 0.0003 * rng.gauss(0, 1)) * (1.3 if i >= 29 else 1.0)
        if mon.observe(i * 60.0, {KEY: value, **_ctx(100 * load, 1e5 * load, 2e4 * load)}) and caught is None:
            caught = i - 29
    assert caught is not None and 0 <= caught <= 5, caught


def test_slope_is_used_early_only_where_it_predicts() -> None:
    rng = random.Random(1)
    flat, driven = RollingBaseline(early_fit=True), RollingBaseline(early_fit=True)
    for _ in range(12):
        f = (rng.uniform(0, 100), rng.uniform(0, 10))
        flat.push(0.5 + 0.01 * rng.gauss(0, 1), None, f)
        driven.push(0.5 + 0.01 * f[0] + 0.01 * rng.gauss(0, 1), None, f)
    for _ in range(6):  # flush the lag
        flat.push(0.5, None, (50.0, 5.0))
        driven.push(1.0, None, (50.0, 5.0))
    assert flat._fit() == ()  # load does not predict it: a flat level (the design stays, for the leverage)
    assert driven._fit() and abs(driven._fit()[0] - 0.01) < 0.002


def test_leverage_widens_the_scale_off_the_seen_load() -> None:
    rng = random.Random(2)
    base = RollingBaseline(early_fit=True)
    for _ in range(16 + 6):
        f = (rng.uniform(40, 60), rng.uniform(4, 6))
        base.push(0.5 + 0.01 * f[0] + 0.01 * rng.gauss(0, 1), None, f)
    near, far = base.scale(SPEC, (50.0, 5.0)), base.scale(SPEC, (200.0, 20.0))
    assert far > 2 * near
    assert base._leverage((50.0, 5.0)) < 0.2 < base._leverage((200.0, 20.0))


def test_ols_fit_inverse_gives_the_textbook_leverage() -> None:
    rows = [(float(i), (float(i), float(i % 3))) for i in range(10)]
    b, design, _ = _ols_fit(rows)  # type: ignore[misc]
    assert abs(b[0] - 1.0) < 1e-9 and abs(b[1]) < 1e-9
    # the mean point's leverage is 1/n; the leverages of the rows sum to p = d + 1
    base = RollingBaseline(early_fit=True)
    base._design = design
    assert abs(base._leverage(design.mean) - 0.1) < 1e-12
    assert abs(sum(base._leverage(f) for _, f in rows) - 3.0) < 1e-9


def _surge_after_quiet_warm_up(seed: int) -> int:
    """Load steady through the warm-up, then a 10-minute 2.5x surge that slows decoding ~20%."""
    rng, mon, alarms = random.Random(seed), DriftMonitor(), 0
    for i in range(40):
        load = (2.5 if 17 <= i < 27 else 1.0) * rng.uniform(0.95, 1.05)
        value = 0.0127 * (1 + 0.13 * (load - 1)) + 0.0002 * rng.gauss(0, 1)
        tokens = _ctx(200 * load, 2e5 * load * rng.uniform(0.9, 1.1), 5e4 * load * rng.uniform(0.9, 1.1))
        alarms += len(mon.observe(i * 60.0, {KEY: value, **tokens}))
    return alarms


def test_a_load_the_warm_up_never_saw_is_not_read_as_drift() -> None:
    # The warm-up's load barely moved, so no slope could be learned; the surge's load lies far
    # outside it, and its leverage widens the scale instead of the flat level alarming.
    assert sum(_surge_after_quiet_warm_up(seed) for seed in range(10)) == 0
