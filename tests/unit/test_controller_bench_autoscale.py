"""`thrifty bench autoscale` runs on a small slice and prints its JSON last."""

from __future__ import annotations

import json

import pytest

from tests.realparts import data_file
from thrifty.bench import autoscale


def test_autoscale_bench_runs_on_a_small_slice(capsys) -> None:
    trace = data_file("traces/azure_conv_2023.csv")
    rc = autoscale.main(["--trace", str(trace), "--limit", "600", "--copies", "1", "--max-replicas", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    policies = {"static_peak", "static_slo", "keda_threshold", "thrifty"}
    assert set(out) == policies | {"oracle", "ratios", "trace"}
    for name in policies:
        r = out[name]
        assert set(r) == {"gpu_hours", "slo_attainment", "slo_attainment_length_aware", "scale_actions", "dropped",
                          "rejected_too_long"}
        assert r["gpu_hours"] > 0 and 0 <= r["slo_attainment"] <= 1
        assert r["slo_attainment_length_aware"] == r["slo_attainment"]  # no allowance set: the same SLO
    assert out["static_slo"]["slo_attainment"] >= 0.99 and out["static_slo"]["dropped"] == 0
    assert out["static_slo"]["gpu_hours"] <= out["static_peak"]["gpu_hours"] or out["static_peak"]["slo_attainment"] < 0.99
    t = out["thrifty"]
    assert out["ratios"]["gpu_hours_vs_static_slo"] == pytest.approx(t["gpu_hours"] / out["static_slo"]["gpu_hours"], rel=0.02)
    assert out["ratios"]["gpu_hours_vs_oracle"] > 0


def test_static_slo_searches_past_the_autoscalers_peak() -> None:
    """A static_peak bisected below what the SLO needs is not the baseline: static_slo grows until it meets it."""
    from thrifty.profiles import get_profile
    from thrifty.sim.fleet import TraceRequest

    profile = get_profile("a100-llama3-8b")
    trace = [TraceRequest(i * 0.02, 2000, 200) for i in range(6000)]  # 50 req/s: several replicas' worth
    common = dict(startup_s=90.0, slo_ttft_s=2.0, tick_s=5.0, max_wait_s=30.0)
    peak = autoscale.smallest_static(trace, profile, 1, common)
    assert not peak[1].meets(0.99, False)
    n, r = autoscale.static_slo(trace, profile, peak, common)
    assert n > 1 and r.meets(0.99, False)
    below = autoscale.run_policy(trace, profile, lambda now, o, cur: n - 1, n - 1, **common)
    assert not below.meets(0.99, False)


def test_mooncake_long_prompts_are_rejected_not_missed(capsys) -> None:
    trace = data_file("traces/mooncake_conversation.jsonl")
    rc = autoscale.main(["--trace", str(trace), "--limit", "400", "--copies", "1", "--max-replicas", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["trace"]["rejected_too_long"] > 0
    assert out["thrifty"]["rejected_too_long"] == out["trace"]["rejected_too_long"]


def test_length_aware_slo_is_reported_beside_the_flat_one(capsys) -> None:
    trace = data_file("traces/azure_conv_2023.csv")
    rc = autoscale.main(["--trace", str(trace), "--limit", "600", "--copies", "1", "--max-replicas", "4",
                         "--variant", "prefill-heavy", "--slo-ttft-ms-per-1k-prompt-tokens", "500"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("static_peak", "keda_threshold", "thrifty"):
        assert out[name]["slo_attainment_length_aware"] >= out[name]["slo_attainment"]


def test_autoscale_bench_bad_trace_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert autoscale.main(["--trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "TIMESTAMP" in err and "\n" not in err


def test_thrifty_policy_batch_is_what_the_replica_can_hold() -> None:
    from thrifty.profiles import get_profile

    roomy = autoscale.thrifty_tier_policy("t", get_profile("a100-llama3-8b"), 90, 2, 8)
    tight = autoscale.thrifty_tier_policy("t", get_profile("h100-llama3-70b-fp8-tp2"), 90, 2, 8)
    tight_profile = get_profile("h100-llama3-70b-fp8-tp2")
    assert tight.target_concurrency == tight_profile.kv_tokens // autoscale.PRIOR_CONTEXT_TOKENS < tight_profile.max_num_seqs
    assert roomy.target_concurrency <= get_profile("a100-llama3-8b").max_num_seqs
    # a KV-bound replica decodes fewer sequences per step, so each token costs more engine time
    assert tight.decode_s_per_token > autoscale.engine_costs(tight_profile, batch=tight_profile.max_num_seqs)["decode_s_per_token"]
