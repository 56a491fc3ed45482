"""The drift bench counts what the sidecar counts, and its matrix runner scores runs against the goals."""

from __future__ import annotations

from thrifty.bench import drift, drift_matrix
from thrifty.sim.fleet import TraceRequest


def test_prompts_over_the_context_are_counted_as_requests_without_usage() -> None:
    # Every other prompt is longer than both tiers' 8192-token context: the engine answers 400,
    # the sidecar still counts the request (thrifty_requests_total, outcome client_error) but
    # no tokens, dollars or latency; so a hit rate keeps all requests as its denominator. Its
    # cache neither holds nor hits it (no engine ever answered it).
    trace = [TraceRequest(i * 0.5, 20000 if i % 2 else 500, 50) for i in range(240)]
    records = drift.simulate(trace, small_share=lambda t: 0.65, semantic_hit=lambda t: 0.15, seed=1)
    assert len(records) == len(trace)
    long_misses = [r for r in records if r.too_long]
    assert long_misses and all(r.prompt == 20000 and r.cache == 0 and r.ttft is None for r in long_misses)
    wins = list(drift.windows(records, 0.0, drift.Injection(), 120.0))
    tiers = [ts for w in wins for ts in w.tiers]
    assert sum(ts.requests for ts in tiers) == len(trace)
    assert sum(ts.errors for ts in tiers) == sum(1 for r in records if r.ttft is None and not r.too_long)
    served_prompt = sum(r.prompt for r in records if not r.too_long)
    assert sum(ts.input_tokens for ts in tiers) == served_prompt
    # no engine answered a too-long prompt, so no cache holds it: every one of them is a rejected miss
    assert sum(1 for r in records if r.too_long) == sum(1 for r in trace if r.prompt_tokens == 20000)
    assert any(r.cache for r in records if r.prompt == 500)


def _out(detected: int, delay: float | None, false: int, days: float = 0.97) -> dict:
    by = {d: {"injected": 3, "detected": 3, "median_delay_s": delay} for d in drift.DRIFTS}
    return {"injected": 12, "detected": detected, "median_delay_s": delay, "false_alarms": false,
            "clean_days": days, "false_alarms_per_day": round(false / days, 2),
            "false_alarms_by_signal": {"itl_mean": round(false / days, 2)} if false else {}, "by_drift": by}


def test_matrix_goals_need_every_drift_fast_and_at_most_one_false_alarm_a_day() -> None:
    assert drift_matrix.goals_met(_out(12, 240.0, 0))
    assert not drift_matrix.goals_met(_out(11, 240.0, 0))
    assert not drift_matrix.goals_met(_out(12, 330.0, 0))
    assert not drift_matrix.goals_met(_out(12, 240.0, 1))  # one in a 0.97-day replay reads 1.03 a day
    assert drift_matrix.goals_met(_out(12, 240.0, 1, days=2.9))  # the same alarm over three replayed days
    row = drift_matrix.row("azure_conv_2023", "bursty", _out(12, 240.0, 1, days=2.9))
    assert row.startswith("| azure_conv_2023 | bursty | 3/3 240s") and "itl_mean 0.34" in row and row.endswith("| Y |")
    assert "error: boom" in drift_matrix.row("t", "none", {"error": "boom"})
