"""Router: data formats, training on a small labelled set, calibration, tier cascade."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from thrifty.proxy.levers.embedder import HashedNgramEncoder
from thrifty.proxy.levers.router import (
    CLUSTER_SCALE,
    VIEW_CHARS,
    RouterModel,
    hard_prompt,
    pick_tier,
    router_view,
    tier_thresholds,
    topic_features,
)
from thrifty.training.labels import DataFormatError, LabelledSet, load_labelled
from thrifty.training.router_calibration import choose_policy, threshold_for_quality, threshold_for_strong_share
from thrifty.training.router_fit import CLUSTER_CHOICES, MARGINS, topic_centroids, train_router

ENC = HashedNgramEncoder(64)


def small_set(n: int = 400, seed: int = 0, weak_on_arithmetic: float = 1.0) -> LabelledSet:
    """Arithmetic prompts both models get right (the weak one with the given chance);
    proof prompts only the strong one does."""
    rng = np.random.default_rng(seed)
    prompts, scores = [], []
    for i in range(n):
        if i % 2:
            prompts.append(f"What is {rng.integers(1, 99)} plus {rng.integers(1, 99)}? case {i}")
            scores.append([float(rng.random() < weak_on_arithmetic), 1.0])
        else:
            prompts.append(f"Prove that the group of order {rng.integers(2, 999)} is abelian, lemma {i}")
            scores.append([float(rng.random() < 0.2), 1.0])
    return LabelledSet(source="synthetic", prompts=prompts, models=["weak", "strong"], scores=np.array(scores), costs=None)


def test_training_learns_which_prompts_are_easy(tmp_path: Path) -> None:
    model = train_router([small_set()], ENC.encode, embedder_name=ENC.name, l2=1.0)
    easy, hard = "What is 12 plus 30? case 9001", "Prove that the group of order 77 is abelian, lemma 9002"
    v = ENC.encode([easy, hard])
    assert model.ease_score(v[0], easy) > 0.7 > 0.4 > model.ease_score(v[1], hard)
    p = model.correctness(v, [easy, hard], ["weak", "strong"])
    assert p[0, 0] > p[1, 0] and p[1, 1] > 0.8
    path = tmp_path / "r.npz"
    model.save(path)
    again = RouterModel.load(path)
    assert again.ease_score(v[0], easy) == pytest.approx(model.ease_score(v[0], easy))
    assert np.allclose(again.correctness(v, [easy, hard], ["weak", "strong"]), p)
    assert len(again.centroids) == model.meta["topic_clusters"]["chosen"] in CLUSTER_CHOICES
    assert again.trained_on([small_set().prompts[0]]).dtype == bool


def test_topic_clusters_give_each_task_its_own_column() -> None:
    rng = np.random.default_rng(1)
    centre_a, centre_b = np.eye(8)[0], np.eye(8)[1]
    a = centre_a + 0.1 * rng.normal(size=(50, 8))
    b = centre_b + 0.1 * rng.normal(size=(50, 8))
    centroids = topic_centroids(np.vstack([a, b]), 2)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    fa, fb = topic_features(a, centroids), topic_features(b, centroids)
    assert set(np.unique(fa)) == {0.0, CLUSTER_SCALE} and (fa.sum(axis=1) == CLUSTER_SCALE).all()
    column_a, column_b = int(np.argmax(fa.sum(axis=0))), int(np.argmax(fb.sum(axis=0)))
    assert column_a != column_b and (fa[:, column_a] > 0).all() and (fb[:, column_b] > 0).all()
    assert topic_features(a, topic_centroids(a, 0)).shape == (50, 0)


def test_calibration_meets_quality_on_training_rows() -> None:
    model = train_router([small_set()], ENC.encode, embedder_name=ENC.name, l2=1.0)
    ease, weak, strong = model.calibration.T
    t = threshold_for_quality(model.calibration, 0.95)
    assert np.where(ease >= t, weak, strong).mean() >= 0.95 * strong.mean()
    assert (ease >= t).mean() > 0.3  # and it actually saves something
    scores = np.linspace(0, 1, 101)
    assert (scores < threshold_for_strong_share(scores, 0.3)).mean() == pytest.approx(0.3, abs=0.02)


def test_predicted_quality_threshold_keeps_the_target_on_unlabelled_prompts() -> None:
    rng = np.random.default_rng(4)
    ease = rng.random(1000)
    p_strong = np.full(1000, 0.9)
    p_weak = 0.9 * ease  # the weak model is as good only where the prompt is easy
    t = threshold_for_quality(np.column_stack([ease, p_weak, p_strong]), 0.95)
    routed = np.where(ease >= t, p_weak, p_strong)
    assert routed.mean() >= 0.95 * 0.9 - 1e-12
    lower = ease[ease < t].max()  # one more prompt to the weak model breaks the target
    assert np.where(ease >= lower, p_weak, p_strong).mean() < 0.95 * 0.9
    assert (ease >= t).mean() == pytest.approx(0.1 ** 0.5, abs=0.03)  # loss 0.9 f^2 / 2 = 5% of 0.9
    # a flat weak model at 0.5 spends the 5% budget at 0.4 a prompt: 11% go weak, any of them
    flat = threshold_for_quality(np.column_stack([ease, np.full(1000, 0.5), p_strong]), 0.95)
    assert (ease >= flat).mean() == pytest.approx(0.045 / 0.4, abs=0.01)
    assert threshold_for_quality(np.column_stack([ease, np.full(1000, 0.5), p_strong]), 1.0) > 1.0  # no budget: all strong


def test_cascade_over_three_tiers() -> None:
    tiers = ["small", "medium", "large"]
    assert tier_thresholds(0.6, 3) == [0.6, 0.3, 0.0]
    assert pick_tier(0.9, tiers, 0.6) == "small"
    assert pick_tier(0.4, tiers, 0.6) == "medium"
    assert pick_tier(0.1, tiers, 0.6) == "large"
    assert pick_tier(0.5, ["small", "large"], 0.6) == "large"


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_loads_both_formats(tmp_path: Path) -> None:
    routellm = tmp_path / "r.csv"
    _write(routellm, ["subject", "prompt", "weak-model", "strong-model"], [["math", "1+1?", "True", "True"], ["math", "prove", "False", "0.5"]])
    data = load_labelled(routellm)
    assert data.models == ["weak-model", "strong-model"] and data.costs is None
    assert data.scores.tolist() == [[1.0, 1.0], [0.0, 0.5]]
    bench = tmp_path / "b.csv"
    _write(bench, ["", "sample_id", "prompt", "eval_name", "a", "b", "a|model_response", "b|model_response", "a|total_cost", "b|total_cost", "oracle_model_to_route_to"],
           [["0", "s0", "q", "arc", "1.0", "0.0", "x", "y", "0.1", "2.0", "a"]])
    data = load_labelled(bench)
    assert data.models == ["a", "b"] and data.costs.tolist() == [[0.1, 2.0]] and data.groups == ["arc"]


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    _write(bad, ["question", "x"], [["a", "b"]])
    with pytest.raises(DataFormatError, match="no 'prompt' column"):
        load_labelled(bad)
    _write(bad, ["prompt", "m1", "m2"], [["a", "7", "1"]])
    with pytest.raises(DataFormatError, match="outside"):
        load_labelled(bad)
    with pytest.raises(DataFormatError, match="cannot read"):
        load_labelled(tmp_path / "missing.csv")


def test_router_view_keeps_the_question_of_few_shot_prompts() -> None:
    shots = "Q: which gas do plants take in?\nA) oxygen B) carbon dioxide\nAnswer: B\n\n" * 40
    a, b = shots + "Q: what melts ice?\nAnswer:", shots + "Q: why is the sky blue?\nAnswer:"
    assert router_view(a) != router_view(b) and router_view(a).endswith("what melts ice?\nAnswer:")
    assert len(router_view(a)) == VIEW_CHARS and router_view("short prompt") == "short prompt"


def test_choose_policy_meets_predicted_target_and_margin_only_costs_more() -> None:
    rng = np.random.default_rng(3)
    predicted = np.column_stack([rng.uniform(0.2, 1.0, 500), rng.uniform(0.2, 0.9, 500), np.full(500, 0.95)])
    price = np.array([1.0, 3.0, 100.0])
    rows = np.arange(500)
    spent = []
    for margin in (0.0, 0.02, 0.04):
        choice = choose_policy(predicted, price, 0.9, margin)
        assert predicted[rows, choice].mean() >= (0.9 + margin) * 0.95 - 1e-9
        spent.append(price[choice].sum())
    assert spent[0] < 0.5 * 100 * 500 and spent[0] <= spent[1] <= spent[2]


def test_training_cross_validates_the_margin_on_costed_files() -> None:
    # the same prompts, but the weak model slips on file 2's arithmetic: pooled predictions
    # flatter it there, and only a margin sized for file 2 keeps its quality
    files = [small_set(), small_set(seed=5, weak_on_arithmetic=0.8)]
    files[1].source = "synthetic-2"
    for data in files:
        data.costs = np.tile([1.0, 20.0], (len(data.prompts), 1))
    model = train_router(files, ENC.encode, embedder_name=ENC.name, l2=1.0)
    margin = model.meta["operating_margin"]["two_models"]
    assert margin in MARGINS and model.margin_for(2) == margin and model.margin_for(11) == 0.0
    for data in files:  # the margin keeps the target on every file, not on their mean
        table = model.meta["margin_cv"]["out_of_fold"][data.source]
        kept = dict((m, q) for m, q, _ in table)
        assert kept[margin] >= 0.95 or margin == MARGINS[-1]
        assert [row[2] for row in table] == sorted((row[2] for row in table), reverse=True)  # a margin never saves more
    assert set(model.meta["topic_clusters"]["out_of_fold_savings"]) <= {str(k) for k in CLUSTER_CHOICES}
    assert model.ease_margin() in MARGINS  # the plain heads' two-model margin, for the ease threshold


def test_choose_policy_mixes_tiers_when_predictions_are_flat() -> None:
    # no per-prompt signal (one task prior per model): an all-or-nothing policy would send
    # everything to the strong model; mixing routes just enough prompts to the cheap one
    predicted = np.tile([0.80, 0.90], (1000, 1))
    choice = choose_policy(predicted, np.array([1.0, 10.0]), 0.95, 0.0)
    cheap_share = (choice == 0).mean()
    assert 0.3 < cheap_share < 0.5  # (0.90 - 0.855) / (0.90 - 0.80) = 0.45
    assert np.array([0.80, 0.90])[choice].mean() >= 0.95 * 0.90 - 1e-9


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Prove that there are infinitely many twin primes.", "proof"),
        ("Show that the square root of 2 is irrational.", "proof"),
        ("Write a Python function that reverses a linked list.", "code"),
        ("Why does this fail?\n```\nx = [1, 2]\nprint(x[3])\n```", "code"),
        ("A shop sells 12 apples at 0.5 dollars each and 7 pears at 0.8 dollars. Calculate the total.", "math"),
        ("Solve 3x + 5 = 20 and then 2y - 4 = x", "math"),
        ("What is the capital of France?", None),
        ("How many legs does a spider have?", None),
        ("Write a short poem about autumn.", None),
        ("Summarise the plot of Hamlet in 3 sentences.", None),
    ],
)
def test_hard_prompt_rule(text: str, kind: str | None) -> None:
    assert hard_prompt(text) == kind


def test_hard_prompt_reads_the_question_not_a_few_shot_prefix() -> None:
    prefix = "Example: prove the lemma. " + "Some more context here. " * 60  # the view cuts the proof off
    assert hard_prompt(prefix + "Q: What colour is the sky?") is None
