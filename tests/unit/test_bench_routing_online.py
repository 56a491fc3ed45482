"""`thrifty bench routing --online`: labels only through shadow samples, the operator's baseline as
the reference, and the reported fields."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from thrifty.bench import routing
from thrifty.bench.routing_online import label_bound, run_stream
from thrifty.training.labels import load_labelled, reference_model

MODELS = ["cheap", "mid", "ref"]


def _stream(n: int = 3000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ease = rng.random(n)
    scores = np.stack([(rng.random(n) < 0.3 + 0.7 * ease).astype(float), (rng.random(n) < 0.5).astype(float), np.ones(n)], axis=1)
    costs = np.tile([1.0, 1.5, 20.0], (n, 1))
    return dict(ease=ease, clusters=np.full(n, -1), predicted=None, scores=scores, costs=costs, models=MODELS, reference=2,
                target=0.95, shadow_rate=0.05, judge_noise=0.0, start_threshold=0.0, seed=seed, prior_strength=20.0)


def test_online_stream_keeps_quality_saves_and_pays_for_shadows() -> None:
    r = run_stream(**_stream())
    assert r.quality_retained >= 0.95
    assert r.cost_reduction > 0.2 and r.final_tier == "cheap"
    assert 0.04 <= r.shadow_share <= 0.06 and 0 < r.shadow_spend_share < 0.1


def test_labels_of_rows_never_shadowed_do_not_change_a_decision() -> None:
    args = _stream()
    first = run_stream(**args)
    hidden = np.setdiff1d(np.arange(len(args["scores"])), first.shadowed_rows)
    args["scores"] = args["scores"].copy()
    args["scores"][hidden, 0] = 1 - args["scores"][hidden, 0]  # flip every label the judge never saw
    second = run_stream(**args)
    assert (second.final_tier, second.final_threshold, second.cheap_share) == (first.final_tier, first.final_threshold, first.cheap_share)
    assert second.quality_retained != first.quality_retained  # (the measurement does read them)


def _routerbench_csv(path: Path, rows: int = 24) -> Path:
    """GPT-3.5 beats GPT-4 on these labels; GPT-4 is the priciest: the operator's baseline."""
    models = ["gpt-3.5-turbo-1106", "gpt-4-1106-preview"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "sample_id", "prompt", "eval_name", *models, *(f"{m}|total_cost" for m in models)])
        for i in range(rows):
            w.writerow([i, f"s{i}", f"Question {i}: what is {i} plus {i + 1}?", "toy", 1.0, float(i % 3 != 0), 0.0001, 0.003])
    return path


def test_reference_is_the_priciest_model_not_the_label_best(tmp_path: Path) -> None:
    data = load_labelled(_routerbench_csv(tmp_path / "toy.csv"))
    assert reference_model(data) == data.models.index("gpt-4-1106-preview")


def test_cli_online_reports_the_documented_fields(tmp_path: Path, capsys) -> None:
    path = _routerbench_csv(tmp_path / "toy.csv", rows=40)
    assert routing.main(["--data", str(path), "--online", "--shadow-rate", "0.2", "--judge-noise", "0.1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["reference"] == "gpt-4-1106-preview"
    for key in ("quality_retained", "cost_reduction", "shadow_share", "final_threshold", "rows_scored"):
        assert isinstance(result[key], (int, float)), key
    assert set(result["random_mix"]) == {"cost_reduction", "quality_retained"}
    assert result["label_bound"]["cost_reduction"] >= result["label_bound"]["with_shadow_spend"]
    assert result["random_mix"]["cost_reduction"] > 0  # the cheaper gpt-3.5 is better here: mixing it in saves
    assert routing.main(["--data", str(path), "--online", "--judge-noise", "0.7"]) == 2  # one-line error


def test_label_bound_is_the_cheapest_oracle_cut_that_keeps_the_target() -> None:
    """Four rows by ease; the cheap tier (price 1, reference 10) is wrong only on the hardest one."""
    ease = np.array([0.9, 0.7, 0.5, 0.1])
    scores = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    costs = np.tile([1.0, 10.0], (4, 1))
    free = label_bound(ease, scores, costs, 1, 0.75, 0.0)
    assert free["cheap_tier"] == 0 and free["cheap_share"] == 1.0  # quality 0.75 keeps a 0.75 target: all cheap
    assert free["cost_reduction"] == free["with_shadow_spend"] == 0.9
    strict = label_bound(ease, scores, costs, 1, 0.95, 0.5)
    assert strict["cheap_share"] == 0.75 and strict["cost_reduction"] == 27 / 40  # the hard row stays on the reference
    # half the rows shadowed: each pays the call it did not make (3 cheap-served: 10 each; 1 reference-served: 1)
    assert strict["with_shadow_spend"] == (27 - 0.5 * 31) / 40
    r = run_stream(**_stream())
    bound = label_bound(_stream()["ease"], _stream()["scores"], _stream()["costs"], 2, 0.95, 0.05)
    assert r.cost_reduction <= bound["cost_reduction"]  # no online run beats the oracle cut with free shadows
