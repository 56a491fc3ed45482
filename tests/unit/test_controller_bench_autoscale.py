"""`thrifty bench autoscale` runs on a small slice and prints its JSON last."""

from __future__ import annotations

import json

from tests.realparts import data_file
from thrifty.bench import autoscale


def test_autoscale_bench_runs_on_a_small_slice(capsys) -> None:
    trace = data_file("traces/azure_conv_2023.csv")
    rc = autoscale.main(["--trace", str(trace), "--limit", "600", "--copies", "1", "--max-replicas", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"static_peak", "keda_threshold", "thrifty"}
    for r in out.values():
        assert set(r) == {"gpu_hours", "slo_attainment", "scale_actions", "dropped"}
        assert r["gpu_hours"] > 0 and 0 <= r["slo_attainment"] <= 1


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
