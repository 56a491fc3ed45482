"""The cost bench's online calibration loop: shadow verdicts in, the router threshold out, as the stream goes.

The production loop on a virtual clock: a routed request (not a cache hit, not the control
group) drawn for a shadow call (`_cost_ledger.shadow_draws`, the same draw `shadow_calls` costs in the
fleet) yields a verdict once its answer and the other tier's are complete (twice the
bench's answer time, `store_delay_s`). Verdicts reach the controller's `QualityCalibrator`
(through its documented API: `observe`, `threshold`) and every control round
(`controller.interval_s`) the threshold the calibrator picks applies to the requests that
follow, as the control plane pushes it to the sidecars. Until the first verdict the
router keeps its starting threshold (the offline one); afterwards, with fewer than the
calibrator's `min_evidence` verdicts, everything goes to the reference (its conservative
start). The judge is the labels: the small model's label against the large model's on the
request's row (a label judge knows absolute quality, so both scores go in the verdict).
One pooled threshold; per-cluster thresholds are not simulated.
"""

from __future__ import annotations

import heapq

import numpy as np

from thrifty.controller.quality_calibration import QualityCalibrator, Verdict
from thrifty.proxy.levers.router import pick_tier


class OnlineRouter:
    """Routes each request with the threshold in force and learns from its verdicts."""

    def __init__(self, ease_of_row: dict[int, float], quality_of: np.ndarray, tiers: list[str], *,
                 start_threshold: float, target: float, confidence: float, shadow_rate: float,
                 draws: np.ndarray, verdict_delay_s: float, round_s: float) -> None:
        self.ease_of_row, self.quality_of, self.tiers = ease_of_row, quality_of, tiers
        self.calibrator = QualityCalibrator(target=target, confidence=confidence)
        self.threshold = start_threshold
        self.start_threshold = start_threshold
        self.shadow_rate, self.draws = shadow_rate, draws
        self.verdict_delay_s, self.round_s = verdict_delay_s, round_s
        self.pending: list[tuple[float, int, Verdict]] = []  # (due, request, verdict)
        self.next_round = round_s
        self.verdicts = 0
        self.rounds = 0
        self.small_requests = self.routed = 0
        self.trajectory: list[tuple[float, float]] = [(0.0, start_threshold)]  # (time, threshold) when it changed

    def advance(self, now: float) -> None:
        """Control rounds up to `now`: verdicts due by a round's time are in it."""
        while self.next_round <= now:
            fresh = False
            while self.pending and self.pending[0][0] <= self.next_round:
                _, _, v = heapq.heappop(self.pending)
                self.calibrator.observe(v)
                self.verdicts += 1
                fresh = True
            if fresh:
                self.rounds += 1
                t = min(self.calibrator.threshold(self.tiers[0], self.tiers[-1]), 1.0 + 1e-9)
                if t != self.threshold:
                    self.threshold = t
                    self.trajectory.append((self.next_round, t))
            self.next_round += self.round_s

    def route(self, i: int, row: int, now: float) -> int:
        """Tier index for request `i` (the router's decision at the threshold in force)."""
        self.advance(now)
        ease = self.ease_of_row.get(row)
        if ease is None:
            return len(self.tiers) - 1
        tier = pick_tier(float(ease), self.tiers, min(self.threshold, 1.0 + 1e-9))
        idx = self.tiers.index(tier)
        self.routed += 1
        self.small_requests += idx == 0
        if self.draws[i] < self.shadow_rate:  # shadowed (or, on the reference, its counterfactual): a verdict later
            small, large = self.quality_of[row, 0], self.quality_of[row, -1]
            v = Verdict(float(ease), -1, self.tiers[0], self.tiers[-1], float(small), float(large))
            heapq.heappush(self.pending, (now + self.verdict_delay_s, i, v))
        return idx

    def summary(self) -> dict:
        thresholds = [t for _, t in self.trajectory]
        return {
            "verdicts": self.verdicts, "rounds_with_verdicts": self.rounds,
            "start_threshold": round(self.start_threshold, 4), "final_threshold": round(min(self.threshold, 1.0), 4),
            "threshold_changes": len(self.trajectory) - 1,
            "threshold_range": [round(min(min(thresholds), 1.0), 4), round(min(max(thresholds), 1.0), 4)],
            "small_share_of_routed": round(self.small_requests / self.routed, 4) if self.routed else 0.0,
            "calibrator": self.calibrator.snapshot()["pairs"],
        }
