"""Plain data and bounds for the quality loop, shared by the sidecar, the wire and the controller.

`ShadowVerdict` is one judged pair (what the controller's calibrator learns from);
`LedgerGroup` is one group's (control / treated) counter deltas of the savings ledger.
The bounds are closed forms (Wilson score, normal approximation with the delta method) so
neither side needs scipy: the sidecar container does not ship it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

VERDICT_KINDS = ("router", "cache")  # a cheaper tier's answer / a semantic-cache hit
GROUPS = ("control", "treated")


@dataclass(slots=True)
class ShadowVerdict:
    kind: str  # "router" | "cache"
    cheap_tier: str  # the tier that answered (for a cache hit: the tier the cached answer came from)
    reference_tier: str
    cluster: int  # the router's topic cluster (-1: none)
    ease: float  # the router's ease score (-1: not routed by the model)
    score: float  # 0..1, 1: as good as the reference


@dataclass(slots=True)
class LedgerGroup:
    group: str  # "control" | "treated"
    requests: int = 0
    dollars: float = 0.0
    dollars_sq: float = 0.0  # sum of squared per-request dollars (for the interval)
    baseline_dollars: float = 0.0  # modelled: the same tokens priced on the baseline tier
    judged: int = 0
    quality_sum: float = 0.0

    def add(self, other: "LedgerGroup") -> None:
        self.requests += other.requests
        self.dollars += other.dollars
        self.dollars_sq += other.dollars_sq
        self.baseline_dollars += other.baseline_dollars
        self.judged += other.judged
        self.quality_sum += other.quality_sum


def z_for(confidence: float, two_sided: bool = False) -> float:
    return NormalDist().inv_cdf(1 - (1 - confidence) / (2 if two_sided else 1))


def wilson(successes: float, n: float, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion; (0, 1) without data."""
    if n <= 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = min(max(successes / n, 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(n: int, total: float, total_sq: float, confidence: float) -> tuple[float, float, float] | None:
    """(mean, lower, upper), two-sided normal interval; None without data."""
    if n <= 0:
        return None
    mean = total / n
    var = max(0.0, total_sq / n - mean * mean) * n / max(n - 1, 1)
    half = z_for(confidence, two_sided=True) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def measured_savings(control: LedgerGroup, treated: LedgerGroup, confidence: float) -> dict[str, float | None]:
    """1 - cost per treated request / cost per control request, with a delta-method interval;
    beside it the modelled savings of the treated group (1 - dollars / baseline dollars)."""
    c = mean_interval(control.requests, control.dollars, control.dollars_sq, confidence)
    t = mean_interval(treated.requests, treated.dollars, treated.dollars_sq, confidence)
    modelled = 1 - treated.dollars / treated.baseline_dollars if treated.baseline_dollars > 0 else None
    out: dict[str, float | None] = {"measured": None, "measured_lower": None, "measured_upper": None, "modelled": modelled}
    if c is None or t is None or c[0] <= 0 or control.requests < 2 or treated.requests < 2:
        return out
    mc, mt = c[0], t[0]
    var_c = max(0.0, control.dollars_sq / control.requests - mc * mc) / (control.requests - 1)
    var_t = max(0.0, treated.dollars_sq / treated.requests - mt * mt) / (treated.requests - 1)
    se = math.sqrt(var_t / mc**2 + (mt**2) * var_c / mc**4)
    z = z_for(confidence, two_sided=True)
    s = 1 - mt / mc
    out.update(measured=s, measured_lower=s - z * se, measured_upper=s + z * se)
    return out
