"""The online calibrator: conservative without evidence, the target kept with evidence, noisy judges."""

import random

import pytest

from thrifty.controller.quality_calibration import CONSERVATIVE, QualityCalibrator, Verdict


def _p_good(ease: float) -> float:
    return ease**0.3  # the cheap tier is right more often on easier prompts


def _true_quality(t: float, steps: int = 20000) -> float:
    """Quality retained at threshold t for uniform ease and _p_good (reference always right)."""
    return 1 - sum(1 - _p_good((i + 0.5) / steps) for i in range(steps) if (i + 0.5) / steps >= t) / steps


def _feed(cal: QualityCalibrator, n: int, rate: float, seed: int, flip: float = 0.0, cheap: str = "small", p_good=_p_good) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        e = rng.random()
        cal.observe_traffic(e)
        if rng.random() < rate:
            score = 1.0 if rng.random() < p_good(e) else 0.0
            if rng.random() < flip:
                score = 1.0 - score
            cal.observe(Verdict(e, -1, cheap, "big", score))


def test_without_evidence_everything_goes_to_the_reference():
    cal = QualityCalibrator()
    assert cal.threshold("small", "big") == CONSERVATIVE
    assert cal.choose({"small": 1.0, "big": 10.0}, "big") == (None, CONSERVATIVE)
    _feed(cal, 100, 0.0, seed=1)  # traffic but no verdicts: the prior alone routes only a little
    assert cal.threshold("small", "big") == CONSERVATIVE  # no verdicts for the pair at all


def test_with_evidence_the_threshold_keeps_the_target_and_saves():
    misses = 0
    for seed in range(20):
        cal = QualityCalibrator(target=0.95, confidence=0.9)
        _feed(cal, 3000, 0.05, seed)
        t = cal.threshold("small", "big")
        assert t < 0.9  # it routes a real share to the cheap tier
        misses += _true_quality(t) < 0.95
    assert misses <= 4  # a 90% lower bound: at most ~10% of runs may miss (20 runs, slack for 2 of them)


def test_a_bad_cheap_tier_gets_nothing():
    cal = QualityCalibrator()
    _feed(cal, 2000, 0.1, seed=3, p_good=lambda e: 0.2)
    t = cal.threshold("small", "big")
    assert _true_quality(t) >= 0.95 and t > 0.9


def test_more_evidence_tightens_the_threshold():
    few, many = QualityCalibrator(), QualityCalibrator()
    _feed(few, 300, 0.1, seed=4)
    _feed(many, 5000, 0.1, seed=4)
    assert many.threshold("small", "big") < few.threshold("small", "big")


def test_noisy_judge_stays_safe_and_a_known_flip_rate_is_corrected():
    for seed in range(5):
        noisy = QualityCalibrator()
        _feed(noisy, 3000, 0.05, seed, flip=0.1)
        assert _true_quality(noisy.threshold("small", "big")) >= 0.95
    clean, corrected, raw = QualityCalibrator(), QualityCalibrator(judge_noise=0.1), QualityCalibrator()
    _feed(clean, 20000, 0.2, seed=9)
    _feed(corrected, 20000, 0.2, seed=9, flip=0.1)
    _feed(raw, 20000, 0.2, seed=9, flip=0.1)
    assert abs(corrected.threshold("small", "big") - clean.threshold("small", "big")) < 0.1
    assert raw.threshold("small", "big") > corrected.threshold("small", "big")  # uncorrected flips: conservative


def test_choose_picks_the_cheaper_pair_that_keeps_the_target():
    cal = QualityCalibrator()
    _feed(cal, 3000, 0.1, seed=5, cheap="tiny", p_good=lambda e: 0.3)
    _feed(cal, 3000, 0.1, seed=6, cheap="small")
    tier, t = cal.choose({"tiny": 0.5, "small": 1.0, "big": 10.0}, "big")
    assert tier == "small" and t < 0.9


def test_a_cluster_without_evidence_is_no_looser_than_the_pool():
    cal = QualityCalibrator()
    _feed(cal, 3000, 0.1, seed=7)
    pooled = cal.threshold("small", "big")
    assert cal.threshold("small", "big", cluster=3) >= pooled
    snap = cal.snapshot()["pairs"]["small->big"]
    assert snap["n"] > 100 and snap["lower_bound"] >= 0.95 and "-1" in snap["clusters"]


def test_warm_start_caps_the_threshold_until_evidence_arrives():
    cal = QualityCalibrator(start_threshold=0.9, min_evidence=50)
    _feed(cal, 200, 0.1, seed=8)  # ~20 verdicts: below min_evidence
    assert cal.threshold("small", "big") >= 0.9


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        QualityCalibrator(target=1.5)
    with pytest.raises(ValueError):
        QualityCalibrator().observe(Verdict(0.5, -1, "a", "b", 2.0))


def test_a_prior_the_verdicts_contradict_fades():
    """The heads predict the cheap tier as good as the reference; it is right only 40% of the time."""
    cal = QualityCalibrator(prior_strength=1000, start_threshold=0.0)
    rng = random.Random(11)
    for _ in range(3000):
        e = rng.random()
        cal.observe_traffic(e, predicted={"small": 0.9, "big": 0.9})
        if rng.random() < 0.05:
            cal.observe(Verdict(e, -1, "small", "big", 1.0 if rng.random() < 0.4 else 0.0))
    t = cal.threshold("small", "big")
    assert 1 - sum(1 for i in range(1000) if i / 1000 >= t) / 1000 * 0.6 >= 0.95  # the realised quality holds


def test_the_prior_alone_is_the_warm_start():
    """Before any verdict, a trusted prior that says the cheap tier is as good routes some traffic."""
    cal = QualityCalibrator(prior_strength=1000, start_threshold=0.0)
    for i in range(1000):
        cal.observe_traffic(i / 1000, predicted={"small": 0.9, "big": 0.9})
    assert cal.threshold("small", "big") < 0.5
    assert cal.choose({"small": 1.0, "big": 10.0}, "big", ["small"])[0] == "small"
