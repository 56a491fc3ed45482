"""Online calibration of the router threshold from judged shadow verdicts.

Why: the artifact's threshold is fitted offline on other data; per-task priors do not
transfer (docs/design/router.md), so the threshold that keeps the quality target on a user's
own traffic must come from that traffic. Shadow evaluation judges a sample of requests
(cheap answer vs the reference tier's); this module turns those verdicts into the cheapest
threshold whose LOWER confidence bound on quality retained meets the target, so without
evidence it routes up (conservative) and it tightens as verdicts arrive.

API (stable; the shadow/controller wiring depends on it):

    Verdict(ease, cluster, cheap_tier, reference_tier, score, reference_score=1.0)
        ease: the router's ease score of the prompt (proxy/levers/router.py `ease_score`)
        cluster: the router's topic cluster of the prompt (-1 if unknown)
        score: judged quality of the cheap answer, 0..1, on the reference's scale: a pairwise
            judge gives 1 (as good as the reference) or 0 (worse), with reference_score 1.0;
            a judge that knows absolute quality (labels, feedback) gives both answers' scores.
    QualityCalibrator(target=0.95, confidence=0.9, prior_strength=20.0, window=5000,
                      traffic_window=5000, start_threshold=CONSERVATIVE, min_evidence=10,
                      judge_noise=0.0)
        (start_threshold: with fewer than min_evidence verdicts for a pair, its threshold is no
        lower than this; 0.0 lets the prior alone be the warm start. The routing bench uses
        prior_strength=1000 with the per-model heads' predictions and confidence=0.95.)
        observe(verdict)                      a judged shadow pair
        observe_traffic(ease, cluster=-1, predicted=None)
                                              every request the router scored (label-free):
                                              gives the share of traffic above a threshold and
                                              the prior (predicted: tier -> P(correct) from the
                                              artifact's per-model heads, when it has them)
        threshold(cheap_tier, reference_tier, cluster=None) -> float
                                              the cheapest threshold (lowest ease cut) whose
                                              lower bound meets the target; CONSERVATIVE
                                              (every request to the reference) without evidence
        choose(costs, reference_tier, candidates=None) -> (cheap_tier | None, threshold)
                                              the tier pair with the lowest expected cost per
                                              request at its threshold (costs: tier -> $/call;
                                              candidates: cheaper tiers to weigh, default those
                                              with verdicts; Bonferroni over them)
        bounds(cheap_tier, reference_tier, cluster=None) -> list[Bound]
                                              the estimate and bound at every cut (for
                                              dashboards and tests)
        snapshot() -> dict                    per pair and per cluster: n, mean, lower bound,
                                              threshold; JSON-ready

Estimator, for a threshold t (the cheap tier answers when ease >= t):
    quality_retained(t) = 1 - share(t) * D(t) / R
where share(t) is the share of traffic with ease >= t (from observe_traffic, else from the
verdicts' eases), D(t) the mean loss (reference_score - score) over verdicts with ease >= t,
and R the mean reference_score. The shadow sample may be uniform over traffic or only over
cheap-served requests (ease >= the current threshold): D(t) is conditional on ease >= t, so
either works for t at or above the current threshold. The prior is `prior_strength`
pseudo-verdicts spread over the observed traffic: loss 1 - ease (the ease score is the
artifact's P(cheap as good as the reference)) or, with `predicted`, p_ref - p_cheap; its
variance is the independent-Bernoulli one (an over-estimate, so conservative); empirical
Bayes caps its weight at var / bias^2 where the verdicts contradict it, so a wrong prior fades.
The bound is normal: Q - z(confidence) * share * sd(D) / sqrt(n_eff) / R, with n_eff = verdicts
above t plus the prior mass above t. Noisy judges: `judge_noise` (the judge's measured flip rate, default 0)
de-biases binary pairwise scores; without it a symmetric flip makes the bound more
conservative (flips add more apparent losses than they hide while the cheap tier is mostly right).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONSERVATIVE = 1.0 + 1e-9  # above every ease score: every request goes to the reference tier


@dataclass(frozen=True, slots=True)
class Verdict:
    ease: float
    cluster: int
    cheap_tier: str
    reference_tier: str
    score: float
    reference_score: float = 1.0


@dataclass(frozen=True, slots=True)
class Bound:
    threshold: float
    share: float  # share of traffic the cheap tier answers at this threshold
    quality: float  # point estimate of quality retained
    lower: float  # lower confidence bound
    n: float  # effective evidence above the threshold (verdicts + prior mass)


class QualityCalibrator:
    """Quality retained per tier pair (and per router cluster) with a confidence bound."""

    def __init__(
        self,
        target: float = 0.95,
        confidence: float = 0.9,
        prior_strength: float = 20.0,
        window: int = 5000,
        traffic_window: int = 5000,
        start_threshold: float = CONSERVATIVE,
        min_evidence: int = 10,
        judge_noise: float = 0.0,
    ) -> None:
        if not 0 < target <= 1:
            raise ValueError("target must be in (0, 1]")
        if not 0.5 <= confidence < 1:
            raise ValueError("confidence must be in [0.5, 1)")
        if not 0 <= judge_noise < 0.5:
            raise ValueError("judge_noise must be in [0, 0.5)")
        self.target, self.confidence = target, confidence
        self.z = NormalDist().inv_cdf(confidence)
        self.prior_strength = prior_strength
        self.start_threshold = start_threshold
        self.min_evidence = min_evidence
        self.judge_noise = judge_noise
        self.window = window
        self._verdicts: dict[tuple[str, str], deque[Verdict]] = {}
        self._traffic: deque[tuple[float, int, Mapping[str, float] | None]] = deque(maxlen=traffic_window)

    # ------------------------------------------------------------------ input

    def observe(self, verdict: Verdict) -> None:
        if not (0 <= verdict.score <= 1 and 0 <= verdict.reference_score <= 1):
            raise ValueError(f"verdict scores must be in [0, 1]: {verdict}")
        key = (verdict.cheap_tier, verdict.reference_tier)
        self._verdicts.setdefault(key, deque(maxlen=self.window)).append(verdict)

    def observe_traffic(self, ease: float, cluster: int = -1, predicted: Mapping[str, float] | None = None) -> None:
        self._traffic.append((float(ease), int(cluster), predicted))

    def pairs(self) -> list[tuple[str, str]]:
        return list(self._verdicts)

    def evidence(self, cheap_tier: str, reference_tier: str, cluster: int | None = None) -> int:
        return sum(1 for v in self._verdicts.get((cheap_tier, reference_tier), ()) if cluster is None or v.cluster == cluster)

    # ------------------------------------------------------------------ decisions

    def threshold(self, cheap_tier: str, reference_tier: str, cluster: int | None = None) -> float:
        return self._best(cheap_tier, reference_tier, cluster).threshold

    def choose(self, costs: Mapping[str, float], reference_tier: str, candidates: Iterable[str] | None = None) -> tuple[str | None, float]:
        """The cheaper tier and threshold with the lowest expected $/request (None: all reference).
        `candidates`: the cheaper tiers to consider (default: those with verdicts); one without
        verdicts is judged on the prior alone, capped by the warm start."""
        best: tuple[str | None, float] = (None, CONSERVATIVE)
        best_cost = float(costs[reference_tier])
        names = [c for c, r in self.pairs() if r == reference_tier] if candidates is None else list(candidates)
        names = [c for c in names if c != reference_tier and c in costs]
        # picking the best of k pairs favours the one whose noise flatters it: each pair's bound
        # is taken at confidence 1 - (1 - confidence) / k (Bonferroni), so the choice keeps it
        z = NormalDist().inv_cdf(1 - (1 - self.confidence) / max(len(names), 1))
        for cheap in names:
            b = self._best(cheap, reference_tier, None, z)
            ref = reference_tier
            expected = b.share * costs[cheap] + (1 - b.share) * costs[ref]
            if expected < best_cost - 1e-15:
                best, best_cost = (cheap, b.threshold), expected
        return best

    def bounds(self, cheap_tier: str, reference_tier: str, cluster: int | None = None, z: float | None = None) -> list[Bound]:
        """The bound at every candidate threshold, from all-reference down to all-cheap."""
        v = [x for x in self._verdicts.get((cheap_tier, reference_tier), ()) if cluster is None or x.cluster == cluster]
        traffic = [t for t in self._traffic if cluster is None or t[1] == cluster]
        if not traffic:  # no traffic feed: the verdicts' eases stand for it (a uniform sample)
            traffic = [(x.ease, x.cluster, None) for x in v]
        out = [Bound(CONSERVATIVE, 0.0, 1.0, 1.0, 0.0)]
        if not traffic:
            return out
        t_ease = np.array([t[0] for t in traffic])
        # prior pseudo-verdicts over the traffic: (loss mean, loss second moment, ref quality)
        p_loss, p_m2, p_ref = np.empty(len(traffic)), np.empty(len(traffic)), np.empty(len(traffic))
        for i, (ease, _, pred) in enumerate(traffic):
            if pred is not None and cheap_tier in pred and reference_tier in pred:
                pc, pr = float(pred[cheap_tier]), float(pred[reference_tier])
            else:
                pc, pr = float(ease), 1.0
            p_loss[i], p_m2[i], p_ref[i] = pr - pc, pr + pc - 2 * pr * pc, pr
        o_ease = np.array([x.ease for x in v])
        o_loss = np.array([x.reference_score - self._debiased(x) for x in v])
        o_ref = np.array([x.reference_score for x in v])
        ref_quality = max((o_ref.sum() + self.prior_strength * p_ref.mean()) / (len(v) + self.prior_strength), 1e-6)
        cuts = np.unique(np.concatenate([t_ease, o_ease]))[::-1]
        kp, lp, mp = _above(cuts, t_ease, p_loss, p_m2)  # prior: traffic with ease >= cut
        ko, lo, mo = _above(cuts, o_ease, o_loss, o_loss**2)  # verdicts with ease >= cut
        share = kp / len(t_ease)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_prior = np.where(kp > 0, lp / np.maximum(kp, 1), 0.0)
            d_obs = np.where(ko > 0, lo / np.maximum(ko, 1), d_prior)
            v_obs = np.where(ko > 1, mo / np.maximum(ko, 1) - d_obs**2, np.nan)
            v_prior = np.where(kp > 0, mp / np.maximum(kp, 1) - d_prior**2, 0.0)
            v_item = np.maximum(np.where(np.isnan(v_obs), v_prior, np.maximum(v_obs, v_prior)), 1e-4)  # a few agreeing verdicts are not zero variance
            # empirical Bayes: the prior counts as n_prior pseudo-verdicts, fewer when the
            # verdicts contradict it (its squared error, less the verdicts' own sampling noise)
            bias2 = np.where(ko > 1, np.maximum((d_obs - d_prior) ** 2 - v_item / np.maximum(ko, 1), 0.0), 0.0)
            n_prior = self.prior_strength * share
            n_prior = np.where(bias2 > 0, np.minimum(n_prior, v_item / np.where(bias2 > 0, bias2, 1.0)), n_prior)
            n = n_prior + ko
            mean = np.where(n > 0, (n_prior * d_prior + lo) / np.maximum(n, 1e-12), d_prior)
            second = np.where(n > 0, (n_prior * (v_prior + d_prior**2) + mo) / np.maximum(n, 1e-12), v_prior + d_prior**2)
            sd = np.sqrt(np.maximum(second - mean**2, 1e-4) / np.maximum(n, 1e-12))
        quality = 1 - share * mean / ref_quality
        lower = quality - (self.z if z is None else z) * share * sd / ref_quality
        out += [Bound(float(c), float(sh), float(q), float(lb), float(k)) for c, sh, q, lb, k in zip(cuts, share, quality, lower, n, strict=True)]
        return out

    def _best(self, cheap_tier: str, reference_tier: str, cluster: int | None, z: float | None = None) -> Bound:
        bounds = self.bounds(cheap_tier, reference_tier, cluster, z)
        if cluster is not None and self.evidence(cheap_tier, reference_tier, cluster) < self.min_evidence:
            # a cluster without evidence: no looser than the pooled threshold or the warm start
            floor = max(self._best(cheap_tier, reference_tier, None).threshold, self.start_threshold)
            return _at_or_above(bounds, floor)
        best = bounds[0]
        for b in bounds[1:]:  # walk towards all-cheap; stop at the first cut that misses
            if b.lower >= self.target:
                best = b
            else:
                break
        if self.evidence(cheap_tier, reference_tier) < self.min_evidence and best.threshold < self.start_threshold:
            best = _at_or_above(bounds, self.start_threshold)  # too little evidence: no looser than the warm start
        return best

    def _debiased(self, v: Verdict) -> float:
        """A pairwise binary score corrected for the judge's known flip rate (unbiased in mean)."""
        p = self.judge_noise
        if p == 0:
            return v.score
        return (v.score - p) / (1 - 2 * p)

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict:
        pairs = {}
        for cheap, ref in self.pairs():
            verdicts = self._verdicts[(cheap, ref)]
            chosen = self._best(cheap, ref, None)
            clusters = {}
            for c in sorted({v.cluster for v in verdicts}):
                scores = [v.score for v in verdicts if v.cluster == c]
                cb = self._best(cheap, ref, c)
                clusters[str(c)] = {"n": len(scores), "mean": round(float(np.mean(scores)), 4), "lower_bound": round(cb.lower, 4), "threshold": round(min(cb.threshold, 1.0), 4)}
            pairs[f"{cheap}->{ref}"] = {
                "n": len(verdicts),
                "mean": round(float(np.mean([v.score for v in verdicts])), 4),
                "threshold": round(min(chosen.threshold, 1.0), 4),
                "cheap_share": round(chosen.share, 4),
                "quality_retained": round(chosen.quality, 4),
                "lower_bound": round(chosen.lower, 4),
                "clusters": clusters,
            }
        return {"target": self.target, "confidence": self.confidence, "traffic_seen": len(self._traffic), "pairs": pairs}


def _at_or_above(bounds: list[Bound], floor: float) -> Bound:
    """The loosest candidate whose threshold is at least `floor` (bounds[0] is all-reference)."""
    return min((b for b in bounds if b.threshold >= floor), key=lambda b: b.threshold, default=bounds[0])


def _above(cuts: np.ndarray, ease: np.ndarray, loss: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each cut (descending): the count, loss sum and second-moment sum of items with ease >= cut."""
    order = np.argsort(ease)
    sorted_ease = ease[order]
    k = len(ease) - np.searchsorted(sorted_ease, cuts, side="left")
    def top(x: np.ndarray) -> np.ndarray:  # [j]: the sum over the j highest-ease items
        return np.concatenate([[0.0], np.cumsum(x[order][::-1])])

    return k.astype(float), top(loss)[k], top(m2)[k]
