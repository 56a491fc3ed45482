"""`thrifty bench cost` runs end to end on a small slice of the real data files.

The router is trained in the test on the slice's training half with the hashed n-gram
encoder (real `train_router`, no model download); everything else is the shipped code:
verifier, caches, simulator, autoscaler.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from thrifty.bench import cost
from thrifty.bench._cost_fleet import RoundRobinTier
from thrifty.bench._cost_workload import Question, build_questions
from thrifty.sim.fleet import TraceRequest
from thrifty.profiles import get_profile

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRACE = DATA / "traces" / "azure_conv_2023.csv"
ROUTING = DATA / "routing" / "routellm_mmlu.csv"
PAIRS = DATA / "cache" / "qqp_pairs_dev.jsonl"
ENCODER = "hashed-ngrams:64"

needs_data = pytest.mark.skipif(not (TRACE.exists() and ROUTING.exists() and PAIRS.exists()),
                                reason="../shared/data (Azure trace, RouteLLM MMLU, QQP pairs) is not present")


def _head(src: Path, dst: Path, lines: int) -> Path:
    with src.open(encoding="utf-8") as f:
        dst.write_text("".join(itertools.islice(f, lines)), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> dict[str, Path]:
    from thrifty.proxy.levers.embedder import HashedNgramEncoder
    from thrifty.training.labels import load_labelled
    from thrifty.training.router_fit import train_router

    tmp = tmp_path_factory.mktemp("cost")
    routing = _head(ROUTING, tmp / "routing.csv", 301)
    encoder = HashedNgramEncoder(64)
    model = train_router([load_labelled(routing)], encoder.encode, embedder_name=encoder.name)
    model.save(tmp / "router.npz")
    return {
        "trace": _head(TRACE, tmp / "trace.csv", 401),
        "routing": routing,
        "pairs": _head(PAIRS, tmp / "pairs.jsonl", 300),
        "router": tmp / "router.npz",
    }


def _run(capsys, inputs: dict[str, Path], *extra: str) -> tuple[int, dict | None, str]:
    argv = ["--trace", str(inputs["trace"]), "--routing", str(inputs["routing"]), "--encoder", ENCODER,
            "--router-artifact", str(inputs["router"]), "--copies", "1", "--max-rows", "120", *extra]
    rc = cost.main(argv)
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return rc, (json.loads(lines[-1]) if rc == 0 else None), out.out + out.err


@needs_data
def test_bench_runs_and_reports_each_lever(capsys, small_inputs):
    rc, report, text = _run(capsys, small_inputs, "--cache-pairs", str(small_inputs["pairs"]), "--repeat-share", "0.3",
                            "--strong-share", "0.5")
    assert rc == 0, text
    assert {"cost_reduction", "quality_retained", "slo_attainment", "breakdown"} <= set(report)
    steps = [b["step"] for b in report["breakdown"]]
    assert steps == [s.name for s in cost.STEPS]
    base, routed, exact = report["breakdown"][:3]
    assert base["replicas"].keys() == {"large"} and base["quality_retained"] == 1.0 and base["dollars"] > 0
    assert routed["small_share"] > 0 and "small" in routed["replicas"]  # the router moved work to the small tier
    assert routed["exact_hit_rate"] == 0 and exact["exact_hit_rate"] > 0  # the exact cache answered repeats
    assert report["workload"]["kinds"]["repeat"] > 0 and report["workload"]["pairs_used"] > 0
    assert report["breakdown"][-1]["profiles"]["small"] == "a100-llama3-8b-fp8"
    for b in report["breakdown"]:  # every step costed both ways; the row takes the autoscaler once it is a lever
        assert b["static"]["dollars"] > 0 and b["autoscaled"]["dollars"] > 0
        chosen = b["autoscaled"] if b["step"] in ("+autoscaler", "+quant/spec profiles") else b["static"]
        assert b["dollars"] == chosen["dollars"] and b["replicas"] == chosen["replicas"]
        # the oracle (per-minute replicas at 100% use, no start-up) is a bound: no provisioning beats it
        assert 0 < b["oracle"]["dollars"] <= min(b["static"]["dollars"], b["autoscaled"]["dollars"])
    assert report["router"]["calibration"].startswith("strong share")
    assert "headline:" in text



@needs_data
def test_control_group_ledger_is_measured_in_the_fleet(capsys, small_inputs):
    rc, report, text = _run(capsys, small_inputs, "--cache-pairs", str(small_inputs["pairs"]), "--repeat-share", "0.3",
                            "--strong-share", "0.5", "--control-share", "0.25", "--shadow-rate", "0.2")
    assert rc == 0, text
    lg = report["ledger"]
    assert {"control_requests", "treated_requests", "measured_savings", "interval", "modelled_savings", "agree",
            "control_quality", "treated_quality", "shadow_dollars"} <= set(lg)
    n = report["workload"]["requests"]
    assert 0.15 * n < lg["control_requests"] < 0.35 * n  # the seeded draw at the stated share
    assert lg["control_requests"] + lg["treated_requests"] <= n  # shed requests are not in the ledger
    lo, hi = lg["interval"]
    assert lo <= lg["measured_savings"] <= hi and lo < hi
    assert lg["agree"] == (lo <= lg["modelled_savings"] <= hi)
    assert lg["shadow_dollars"] > 0 and report["breakdown"][-1]["shadow_calls"] > 0
    assert report["breakdown"][0]["shadow_calls"] == 0 and "measured_savings" not in report["breakdown"][0]
    # control requests take the baseline path: no cache hits, the reference's labels
    assert lg["control_quality"]["mean"] is not None and lg["treated_quality"]["interval"][0] <= lg["treated_quality"]["mean"]



@needs_data
def test_online_loop_moves_the_threshold_from_verdicts(capsys, small_inputs):
    rc, report, text = _run(capsys, small_inputs, "--strong-share", "0.5", "--shadow-rate", "0.5")
    assert rc == 0, text
    online = report["online"]
    assert online["verdicts"] > 0 and online["rounds_with_verdicts"] > 0
    assert online["threshold_changes"] > 0  # the calibrator's threshold replaced the offline one
    assert online["start_threshold"] == report["router"]["threshold"]
    assert "small->large" in online["calibrator"]
    rc, report, text = _run(capsys, small_inputs, "--strong-share", "0.5", "--shadow-rate", "0.5", "--offline")
    assert rc == 0 and "online" not in report  # --offline: the threshold holds

def test_shadow_calls_follow_the_sidecars_draw():
    from thrifty.bench._cost_caches import Outcome
    from thrifty.bench._cost_ledger import draw_control, shadow_calls

    outcomes = [Outcome("small", None, 1.0), Outcome("large", None, 1.0), Outcome(None, "exact", 1.0),
                Outcome(None, "semantic", 1.0), Outcome("large", None, 1.0, control=True)]
    assert shadow_calls(outcomes, 1.0, 0, "small", "large") == [(0, "large"), (1, "small"), (3, "large")]
    assert shadow_calls(outcomes, 0.0, 0, "small", "large") == []
    assert shadow_calls(outcomes, 1.0, 0, "small", "large", routed=False) == [(0, "large"), (3, "large")]
    control = draw_control(20000, 0.01, 3)
    assert 150 < control.sum() < 250 and (control == draw_control(20000, 0.01, 3)).all()

@needs_data
def test_missing_router_is_reported_not_faked(capsys, small_inputs, tmp_path):
    inputs = dict(small_inputs, router=tmp_path / "absent.npz")
    rc, report, text = _run(capsys, inputs)
    assert rc == 0, text
    assert report["not_ready"] and "router" in report["not_ready"][0]
    assert all(b["small_share"] == 0 for b in report["breakdown"])
    assert "NOT READY" in text


@needs_data
def test_bad_arguments_give_one_line(capsys, small_inputs, tmp_path):
    rc, _, text = _run(capsys, small_inputs, "--repeat-share", "1.5")
    assert rc == 2 and "--repeat-share" in text and "Traceback" not in text
    rc, _, text = _run(capsys, dict(small_inputs, trace=tmp_path / "nope.csv"))
    assert rc == 2 and "cannot read" in text and "Traceback" not in text


def test_round_robin_spreads_evenly():
    tier = RoundRobinTier("t", get_profile("a100-llama3-8b"))  # the baseline's tiers
    tier.start(3, 0.0)
    for i in range(9):
        tier.submit(0.0, 100, 50, 0.0, tag=i)
    assert [p.inflight for p in tier.pods] == [3, 3, 3]


def test_questions_repeat_and_paraphrase_consistently():
    trace = [TraceRequest(float(i), 100, 10) for i in range(400)]
    prompts = [f"question number {i}" for i in range(50)]
    pairs = [(f"a{i}", f"b{i}", i % 2) for i in range(40)]
    qs, tenants, used = build_questions(trace, list(range(50)), prompts, pairs, repeat_share=0.4, seed=1)
    again, _, _ = build_questions(trace, list(range(50)), prompts, pairs, repeat_share=0.4, seed=1)
    assert [(q.text, q.qid) for q in qs] == [(q.text, q.qid) for q in again]  # deterministic
    assert tenants >= 2 and used > 0
    for i, q in enumerate(qs):
        if q.kind == "repeat":
            assert any(p.text == q.text and p.qid == q.qid and p.tenant == q.tenant for p in qs[:i])
        if q.kind in ("paraphrase", "lookalike"):
            k = int(q.text[1:])
            # the request rewritten to this pair's text_a: earlier, same tenant (caches never cross tenants)
            original = [p for p in qs[:i] if p.text == f"a{k}" and p.tenant == q.tenant][-1]
            assert (original.qid == q.qid) == (q.kind == "paraphrase") == (pairs[k][2] == 1)
    fresh_rows = [(q.tenant, q.row) for q in qs if q.kind == "fresh"]
    assert len(fresh_rows) == len(set(fresh_rows))  # a row is asked fresh once per tenant


def test_router_budget_covers_the_worst_quantized_tier_and_the_cv_margin():
    class Router:
        def ease_margin(self) -> float:
            return 0.005

        def margin_for(self, n_models: int) -> float:  # the heads' margins: not the ease threshold's
            return 0.015 if n_models <= 2 else 0.025

    args = cost.parse_args(["--trace", "t.csv", "--routing", "r.csv", "--target-quality", "0.95"])
    profiles = [get_profile("a100-llama3-8b-fp8"), get_profile("h100-llama3-70b-fp8-tp2")]
    target = cost._router_quality_target(args, Router(), profiles)
    assert target == pytest.approx(0.955 / 0.9928)  # the 8B's 99.28% is the worse recovery
    unquantized = cost._router_quality_target(args, Router(), [get_profile("h100-llama3-70b-tp4")])
    assert unquantized == pytest.approx(0.955)
    strict = cost.parse_args(["--trace", "t.csv", "--routing", "r.csv", "--target-quality", "0.999"])
    assert cost._router_quality_target(strict, Router(), profiles) == 1.0  # capped: all-strong at worst


def test_predicted_quality_guard_raises_the_threshold_only_when_the_heads_predict_a_miss():
    class Router:
        def margin_for(self, n_models: int) -> float:
            return 0.0 if n_models <= 2 else 0.025

    args = cost.parse_args(["--trace", "t.csv", "--routing", "r.csv", "--target-quality", "0.95"])
    rows = [10, 11]
    ease = np.array([0.9, 0.1])
    predicted = np.array([[0.0, 1.0], [1.0, 1.0]])  # the "easy" row 10 is one the small model gets wrong
    profiles = [get_profile("h100-llama3-70b-tp4")]  # unquantized: recovery 1
    asked_once = [Question("fresh", 0, "a", 10, 0), Question("fresh", 0, "b", 11, 1)]
    # a pooled threshold sending both to the small model is predicted to keep half: raised past row 10
    raised, kept, target = cost._predicted_quality_guard(args, Router(), 11, rows, ease, predicted, asked_once, profiles, 0.05)
    assert kept == pytest.approx(0.5) and target == pytest.approx(0.975) and raised > 0.9
    # row 11 asked 40 times: row 10 going small costs 1/41 < 5%, so the pooled threshold stands
    many = asked_once + [Question("repeat", 0, "b", 11, 1)] * 39
    raised, kept, _ = cost._predicted_quality_guard(args, Router(), 2, rows, ease, predicted, many, profiles, 0.05)
    assert raised is None and kept == pytest.approx(40 / 41)
    # a threshold already above what the heads ask for is never lowered
    raised, _, _ = cost._predicted_quality_guard(args, Router(), 11, rows, ease, np.array([[0.0, 1.0], [0.0, 1.0]]),
                                                 asked_once, profiles, 0.5)
    assert raised is not None and raised >= 0.5


@needs_data
def test_prompts_over_the_context_are_rejected_not_missed(capsys, small_inputs, tmp_path):
    """A prompt over the engines' 8192-token context is a 400 (as vLLM answers it), not an SLO
    miss: the same trace with every fourth prompt made too long keeps the SLO of the others,
    reports how many were rejected."""
    rows = small_inputs["trace"].read_text(encoding="utf-8").splitlines()
    longer = [rows[0]] + [",".join([r.split(",")[0], "9000", r.split(",")[2]]) if i % 4 == 0 else r
                          for i, r in enumerate(rows[1:])]
    trace = tmp_path / "long.csv"
    trace.write_text("\n".join(longer) + "\n", encoding="utf-8")
    rc, report, text = _run(capsys, {**small_inputs, "trace": trace}, "--cache-pairs", str(small_inputs["pairs"]),
                            "--repeat-share", "0.3", "--strong-share", "0.5")
    assert rc == 0, text
    too_long = sum(1 for i in range(len(rows) - 1) if i % 4 == 0)
    assert report["workload"]["rejected_too_long"] == too_long
    assert report["slo_attainment"] >= 0.9  # was 0.75 at best when a rejection counted as a miss
    assert "rejected (400" in text


def test_no_cache_answers_a_prompt_no_engine_could_take() -> None:
    """The exact cache answers a repeat, but not a repeat whose prompt is over the context:
    no engine answered it, so no answer to it is stored or given."""
    from thrifty.bench._cost_caches import LeverSettings, run_levers

    asked = [Question("fresh", 0, "q", 0, 0), Question("repeat", 0, "q", 0, 0)]
    quality = np.ones((1, 2))
    settings = LeverSettings(exact_cache=True, semantic_cache=False, store_delay_s=1.0)

    def run(servable):
        return run_levers(asked, [0.0, 10.0], [50, 50], np.ones(1, dtype=int), ["small", "large"], quality, {},
                          settings, None, 1.0, servable=servable)

    assert run(np.array([True, True]))[1].cache == "exact"
    too_long = run(np.array([False, False]))
    assert [o.cache for o in too_long] == [None, None] and [o.tier for o in too_long] == ["large", "large"]
