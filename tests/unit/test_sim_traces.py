"""`thrifty.sim.traces`: both trace formats load alike, bad input is one line, variants do what they say."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.realparts import data_file
from thrifty.sim.traces import VARIANTS, TraceError, TraceRequest, load_trace, make_variant


def _mooncake(tmp_path, rows) -> str:
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_mooncake_rows_become_seconds_sorted_from_zero(tmp_path) -> None:
    path = _mooncake(tmp_path, [
        {"timestamp": 5000, "input_length": 700, "output_length": 20, "hash_ids": [1, 2]},
        {"timestamp": 2000, "input_length": 9000, "output_length": 0, "hash_ids": []},
        {"timestamp": 3500, "input_length": 10, "output_length": 5},
    ])
    assert load_trace(path) == [TraceRequest(0.0, 9000, 1), TraceRequest(1.5, 10, 5), TraceRequest(3.0, 700, 20)]
    assert len(load_trace(path, limit=2)) == 2


def test_azure_csv_goes_through_the_azure_reader(tmp_path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,109\n")
    t = load_trace(p)
    assert [(r.prompt_tokens, r.output_tokens) for r in t] == [(374, 44), (396, 109)]
    assert t[1].arrival == pytest.approx(4.3145789, abs=1e-5)


@pytest.mark.parametrize("text, needle", [
    ("a,b\n1,2\n", "expected an Azure CSV"),
    ('{"timestamp": 1, "input_length": "x"}\n', "line 1"),
    ('{"timestamp": 1, "input_length": 3, "output_length": 2}\n[1]\n', "line 2"),
    ('{"timestamp": -5, "input_length": 3, "output_length": 2}\n', "timestamp"),
    ("", "expected an Azure CSV"),
])
def test_bad_traces_are_one_line_errors(tmp_path, text, needle) -> None:
    p = tmp_path / "bad"
    p.write_text(text)
    with pytest.raises(TraceError) as err:
        load_trace(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_a_trace_error(tmp_path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "nope.jsonl")


def _steady(n: int = 6000, gap: float = 0.6) -> list[TraceRequest]:
    return [TraceRequest(i * gap, 1000 + (i % 7) * 100, 100 + (i % 5) * 10) for i in range(n)]


def _per_minute(trace: list[TraceRequest]) -> list[int]:
    minutes = int(max(r.arrival for r in trace) // 60)
    counts = [0] * minutes
    for r in trace:
        if int(r.arrival // 60) < minutes:
            counts[int(r.arrival // 60)] += 1
    return counts


@pytest.mark.parametrize("kind", VARIANTS)
def test_variants_are_seeded_sorted_and_stay_in_the_span(kind) -> None:
    base = _steady()
    a, b, c = make_variant(base, kind, seed=1), make_variant(base, kind, seed=1), make_variant(base, kind, seed=2)
    assert a == b
    assert [r.arrival for r in a] == sorted(r.arrival for r in a)
    assert all(0 <= r.arrival <= base[-1].arrival for r in a)
    if kind != "prefill-heavy":
        assert a != c


def test_prefill_heavy_shifts_work_to_the_prompt() -> None:
    base = _steady()
    v = make_variant(base, "prefill-heavy")
    assert [r.arrival for r in v] == [r.arrival for r in base]
    assert sum(r.prompt_tokens for r in v) == pytest.approx(3 * sum(r.prompt_tokens for r in base), rel=0.01)
    assert sum(r.output_tokens for r in v) < 0.4 * sum(r.output_tokens for r in base)


def test_rate_variants_multiply_the_rate_and_keep_the_mix() -> None:
    base = _steady()
    for kind, k in (("rate2x", 2), ("rate4x", 4)):
        v = make_variant(base, kind)
        assert len(v) == k * len(base)
        assert statistics.mean(r.prompt_tokens for r in v) == pytest.approx(statistics.mean(r.prompt_tokens for r in base))


def test_bursty_keeps_the_mean_and_raises_the_peak() -> None:
    base = _steady()
    v = make_variant(base, "bursty", seed=3)
    assert len(v) == pytest.approx(len(base), rel=0.15)
    per_min = _per_minute(v)
    assert max(per_min) > 1.8 * statistics.mean(per_min)
    assert max(_per_minute(base)) < 1.05 * statistics.mean(_per_minute(base))


def test_diurnal_starts_low_and_peaks_mid_trace() -> None:
    base = _steady()
    per_min = _per_minute(make_variant(base, "diurnal"))
    mid = len(per_min) // 2
    assert sum(per_min[mid - 3:mid + 3]) > 3 * sum(per_min[:6])
    assert sum(per_min) == pytest.approx(sum(_per_minute(base)), rel=0.05)


def test_surge_doubles_ten_minutes_only() -> None:
    base = _steady()
    v = make_variant(base, "surge", seed=5)
    per_min = _per_minute(v)
    doubled = [m for m, c in enumerate(per_min) if c > 1.6 * 100]
    assert 9 <= len(doubled) <= 11 and doubled == list(range(doubled[0], doubled[0] + len(doubled)))
    assert 0.25 * 60 - 1 <= doubled[0] <= 0.6 * 60 + 1


def test_unknown_variant_names_the_choices() -> None:
    with pytest.raises(TraceError, match="bursty"):
        make_variant(_steady(10), "spiky")


def test_both_shared_traces_load() -> None:
    azure = load_trace(data_file("traces/azure_conv_2023.csv"), limit=500)
    moon = load_trace(data_file("traces/mooncake_conversation.jsonl"), limit=500)
    for t in (azure, moon):
        assert len(t) == 500 and t[0].arrival == 0.0 and t[-1].arrival > 0


def test_fleet_rejects_prompts_over_the_context_and_caps_outputs() -> None:
    from thrifty.profiles import get_profile
    from thrifty.sim.fleet import SimTier

    profile = get_profile("a100-llama3-8b")
    tier = SimTier("t", profile)
    tier.start(1, 0.0)
    n = profile.max_model_len
    tier.submit(0.0, n, 10, 0.0)  # no room for a single token: vLLM's 400
    tier.submit(0.0, n + 5000, 10, 0.0)
    tier.submit(0.0, n - 100, 500, 0.0)  # fits, output stops at the context
    tier.submit(0.0, 100, 20, 0.0)
    tier.advance(120.0)
    assert tier.rejected_too_long == 2
    assert sorted((s.prompt_tokens, s.output_tokens) for s in tier.served) == [(100, 20), (n - 100, 100)]
