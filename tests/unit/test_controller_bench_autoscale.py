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
    """The bench builds its policy with the controller's factory from a config: the concurrency
    target is max_num_seqs or what the ITL SLO allows (memory is the measured KV fill's); the
    capacity prior's batch is also bounded by what the KV cache holds at the prior's contexts."""
    from thrifty.controller.policy import tier_policy
    from thrifty.profiles import PRIOR_CONTEXT_TOKENS, engine_costs, get_profile

    def policy(profile: str, **kw):
        config = autoscale.fleet_config([("t", get_profile(profile), 8)], startup_s=90, slo_ttft_s=2, **kw)
        return tier_policy(config, config.tiers[0])

    roomy, tight = policy("a100-llama3-8b"), policy("h100-llama3-70b-fp8-tp2")
    tight_profile = get_profile("h100-llama3-70b-fp8-tp2")
    assert tight_profile.kv_tokens // PRIOR_CONTEXT_TOKENS < tight_profile.max_num_seqs
    assert tight.target_concurrency == tight_profile.max_num_seqs  # not the KV bound: the KV floor measures memory
    assert roomy.target_concurrency <= get_profile("a100-llama3-8b").max_num_seqs
    assert roomy.startup_s == 90 and roomy.max_replicas == 8 and roomy.slo_ttft_s == 2
    # a KV-bound replica decodes fewer sequences per step, so each token costs more engine time
    kv_batch = tight_profile.kv_tokens // PRIOR_CONTEXT_TOKENS
    assert tight.decode_s_per_token == engine_costs(tight_profile, batch=kv_batch)["decode_s_per_token"]
    assert tight.decode_s_per_token > engine_costs(tight_profile, batch=tight_profile.max_num_seqs)["decode_s_per_token"]
    assert policy("a100-llama3-8b", target_utilization=0.7).target_utilization == 0.7


def test_a_speculating_tier_gets_a_cheaper_decode_prior_from_its_config() -> None:
    """engine.speculative (drafts, expected acceptance) reaches the capacity prior: a verify
    step costs more but emits ~2.3 tokens at 4 drafts and 0.6 acceptance; a draft nobody
    accepts makes decoding dearer. The TTFT floor does not count on it (the cost bench's
    Mooncake replay: large tier SLO 0.9767 when it did, 0.9977 without). The bench's config
    carries a sim tier's speculation."""
    from thrifty.controller.policy import tier_policy
    from thrifty.profiles import get_profile
    from thrifty.sim.model import SpeculativeSim

    def policy(spec: SpeculativeSim | None):
        config = autoscale.fleet_config([("t", get_profile("h100-llama3-70b-fp8-tp2"), 8)], startup_s=90,
                                        slo_ttft_s=2, speculative={"t": spec} if spec else None)
        assert (config.tiers[0].engine.speculative is not None) == (spec is not None)
        return tier_policy(config, config.tiers[0])

    plain, good, useless = policy(None), policy(SpeculativeSim(4, 0.6)), policy(SpeculativeSim(4, 0.0))
    assert good.decode_s_per_token < 0.85 * plain.decode_s_per_token
    assert useless.decode_s_per_token > plain.decode_s_per_token
    # the TTFT floor's prefill queue keeps the decode share without speculation (verify steps are wide)
    assert good.ttft_decode_s_per_token == plain.decode_s_per_token and plain.ttft_decode_s_per_token == 0


def test_itl_slo_caps_the_batch_where_a_step_would_break_it() -> None:
    from thrifty.controller.policy import target_batch
    from thrifty.profiles import PRIOR_CONTEXT_TOKENS, get_profile

    l4 = get_profile("l4-llama3-8b-awq")
    full = l4.kv_tokens // PRIOR_CONTEXT_TOKENS
    capped = target_batch(l4.max_num_seqs, l4, 0.05)
    assert 1 <= capped < full
    assert l4.decode_step_time(capped, capped * PRIOR_CONTEXT_TOKENS) <= 0.05
    assert l4.decode_step_time(capped + 1, (capped + 1) * PRIOR_CONTEXT_TOKENS) > 0.05
    assert target_batch(l4.max_num_seqs, l4, 10.0) == full
    assert target_batch(l4.max_num_seqs, l4, 1e-6) == full  # even one sequence misses: replicas cannot help
    assert target_batch(64, None, 0.1) == 64


def test_config_knobs_the_benches_use_are_validated_in_one_line() -> None:
    import pytest

    from thrifty.config import ConfigError, parse_config

    base = {"name": "t", "model": "m", "price": {"gpu_hour": 1.0}}
    with pytest.raises(ConfigError, match=r"^config: autoscaler.target_utilization: "):
        parse_config({"tiers": [base], "autoscaler": {"target_utilization": 1.5}})
    with pytest.raises(ConfigError, match=r"^config: tiers\[0\].replicas.startup_s: "):
        parse_config({"tiers": [{**base, "replicas": {"startup_s": -1}}]})
