"""The statistics under drift detection: standardise one series, test it sequentially.

Contract: `RollingBaseline` gives a lagged robust level (`center`) and noise `scale` for a
series; `make_test(method, cusum_h)` returns a `SequentialTest` (two-sided CUSUM,
Page-Hinkley or an EWMA chart) that reports (direction, estimated start) on alarm;
`threshold_for` derives CUSUM's h from a fleet-wide false-alarm budget (Siegmund's
approximation). Why: thresholds come from a budget, not a tuned constant, so they hold as
the number of watched series changes. Measurements: docs/design/drift.md.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

Method = Literal["cusum", "page_hinkley", "ewma"]
METHODS: tuple[Method, ...] = ("cusum", "page_hinkley", "ewma")


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """How noisy a signal is allowed to be: floors on the scale, minimum effect size."""

    name: str
    rel_floor: float  # scale >= rel_floor * |baseline|
    abs_floor: float  # scale >= abs_floor
    min_effect: float  # |shift| must be >= this relative (or absolute for shares/rates) change
    relative: bool = True  # size reported relative to baseline (else absolute difference)
    # Latency: moves with the bucket's load from the first bucket on, so a fresh baseline
    # fits its load slope from the warm-up (`RollingBaseline(early_fit=True)`); ratios and
    # shares do not in expectation, and a slope fitted to a few of their buckets is noise.
    load_driven: bool = False
    # A price per token mixed over input and output (a tier's cost per baseline dollar): the
    # bucket's output share of the tokens explains it (`drift.mix_features`), not the load's
    # level; fitted from the warm-up on too, as latency's load is.
    mix_driven: bool = False
    # A proportion of the bucket's requests: its scale is floored at the binomial sampling
    # noise at the baseline's own rate and the bucket's size, sqrt(p (1 - p) / n), not at a
    # fixed absolute floor (a floor sized for a 15% rate hid a collapse of a 3% one).
    binomial: bool = False


# Winsorising bound on z: with CUSUM's k = 1 a bucket adds at most Z_CLIP - k = 2, so an alarm
# (S > h ~ 5) needs at least ceil(h / 2) = 3 buckets of evidence: a sustained change, not a blip.
Z_CLIP = 3.0
CUSUM_K = 1.0


class SequentialTest(Protocol):
    statistic: float
    threshold: float

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        """Feed one standardised value; on alarm return (direction, estimated start time)."""

    def reset(self) -> None: ...


def cusum_arl(k: float, h: float) -> float:
    """In-control average run length (buckets) of a one-sided CUSUM on N(0, 1) (Siegmund 1985)."""
    b = 2 * k * (h + 1.166)
    return (math.exp(b) - b - 1) / (2 * k * k)


def cusum_threshold(k: float, arl: float) -> float:
    """The h whose one-sided in-control run length is `arl` buckets (bisection on `cusum_arl`)."""
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cusum_arl(k, mid) < arl:
            lo = mid
        else:
            hi = mid
    return hi


def threshold_for(false_alarms_per_day: float, series: int, bucket_s: float, k: float = CUSUM_K) -> float:
    """CUSUM h for a fleet-wide false-alarm budget spread over `series` two-sided tests."""
    if false_alarms_per_day <= 0 or series < 1 or bucket_s <= 0:
        raise ValueError("false_alarms_per_day, series and bucket_s must be positive")
    two_sided_arl = series * (86400.0 / bucket_s) / false_alarms_per_day
    return cusum_threshold(k, 2 * two_sided_arl)  # each side gets half the budget


class Cusum:
    """Two-sided tabular CUSUM: S = max(0, S + z - k); alarm at S > h."""

    def __init__(self, k: float = CUSUM_K, h: float = 5.0) -> None:
        self.k, self.threshold = k, h
        self.reset()

    def reset(self) -> None:
        self.up = self.down = 0.0
        self.up_start = self.down_start = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        if self.up == 0.0:
            self.up_start = t
        if self.down == 0.0:
            self.down_start = t
        self.up = max(0.0, self.up + z - self.k)
        self.down = max(0.0, self.down - z - self.k)
        self.statistic = max(self.up, self.down)
        if self.up > self.threshold:
            return "up", self.up_start
        if self.down > self.threshold:
            return "down", self.down_start
        return None


class PageHinkley:
    """Page-Hinkley on z against its running mean since the last reset."""

    def __init__(self, delta: float = 0.5, lam: float = 6.0) -> None:
        self.delta, self.threshold = delta, lam
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m_up = self.m_down = 0.0
        self.min_up = self.max_down = 0.0
        self.t_min_up = self.t_max_down = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        self.n += 1
        self.mean += (z - self.mean) / self.n
        self.m_up += z - self.mean - self.delta
        self.m_down += z - self.mean + self.delta
        if self.m_up <= self.min_up:
            self.min_up, self.t_min_up = self.m_up, t
        if self.m_down >= self.max_down:
            self.max_down, self.t_max_down = self.m_down, t
        up, down = self.m_up - self.min_up, self.max_down - self.m_down
        self.statistic = max(up, down)
        if up > self.threshold:
            return "up", self.t_min_up
        if down > self.threshold:
            return "down", self.t_max_down
        return None


class Ewma:
    """EWMA control chart: e = lam*z + (1-lam)*e; alarm at |e| > L*sqrt(lam/(2-lam))."""

    def __init__(self, lam: float = 0.3, width: float = 3.0) -> None:
        self.lam = lam
        self.threshold = width * math.sqrt(lam / (2 - lam))
        self.reset()

    def reset(self) -> None:
        self.e = 0.0
        self.start = 0.0
        self.statistic = 0.0

    def update(self, z: float, t: float) -> tuple[str, float] | None:
        if abs(self.e) < 0.5 * self.threshold:
            self.start = t
        self.e = self.lam * z + (1 - self.lam) * self.e
        self.statistic = abs(self.e)
        if self.e > self.threshold:
            return "up", self.start
        if self.e < -self.threshold:
            return "down", self.start
        return None


def make_test(method: Method, cusum_h: float = 5.0) -> SequentialTest:
    if method == "cusum":
        return Cusum(CUSUM_K, cusum_h)
    if method == "page_hinkley":
        return PageHinkley()
    if method == "ewma":
        return Ewma()
    raise ValueError(f"unknown drift method {method!r}; use one of {', '.join(METHODS)}")


class RollingBaseline:
    """Rolling median of the last `size` accepted values; robust scale from a longer residual window.

    Values (and their residuals from the median in force when they were seen) are fed
    `lag` buckets late, so a change under way is not learned as normal before it is caught.
    The noise level changes more slowly than the level, so the scale is the MAD of the last
    `scale_size` residuals from the rolling median (why 180: docs/design/drift.md).

    Two corrections learned from the same lagged history (docs/design/drift.md, "Calibrated
    on the fleet's own history"):
    - load: with `features` (the bucket's load, e.g. its tokens), the level is
      median(x - b.f) + b.f_now with b the least-squares slope of x on f over the history,
      so latency that follows the traffic's bursts or daily swing is not read as drift;
    - bucket size: residuals are weighted by (n / n_median)^gamma (n = the bucket's
      requests) with gamma fitted on the history (-> 0.5 for sampling noise, 0 for none), so
      a quiet bucket's wider noise does not read as a shift.

    With `early_fit` (latency's load, a cost index's token mix) the slope is fitted from the
    warm-up on, where it predicts out of sample, the fit's leverage widens the scale, and a
    load the young history has not seen is not tested (`unseen`): docs/design/drift.md, "A
    fresh monitor's first hour". `floored` (default: `early_fit`; latency only) keeps the
    level at or above every value the history holds (latency is positive and convex in load).
    """

    def __init__(self, size: int = 30, lag: int = 6, scale_size: int = 180, min_residuals: int = 30,
                 lags: int = 1, early_fit: bool = False, floored: bool | None = None) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.feats: deque[tuple[float, ...]] = deque(maxlen=size)
        self.history: deque[tuple[float, tuple[float, ...], float]] = deque(maxlen=scale_size)
        self.residuals: deque[float] = deque(maxlen=scale_size)
        self.res_counts: deque[float] = deque(maxlen=scale_size)
        self.pending: deque[tuple[float, float | None, tuple[float, ...], float]] = deque()
        self.lag, self.min_residuals, self.lags, self.early_fit = lag, min_residuals, lags, early_fit
        self.floored = early_fit if floored is None else floored
        self._slope: tuple[float, ...] | None = None
        self._kept_slope: tuple[float, ...] = ()  # the last fit, kept across a re-baseline
        self._design: _Design | None = None  # the fit's feature means and inverse scatter (leverage)
        self._gamma = 0.0
        self._n_ref = 1.0

    def push(self, x: float, residual: float | None = None, features: tuple[float, ...] = (),
             count: float = 1.0) -> None:
        """Accept one bucket (value, raw residual, load features, request count), `lag` buckets late."""
        self.pending.append((x, residual, features, count))
        while len(self.pending) > self.lag:
            value, res, f, n = self.pending.popleft()
            self.values.append(value)
            self.feats.append(f)
            self.history.append((value, f, n))
            if res is not None:
                self.residuals.append(res)
                self.res_counts.append(n)
            self._slope = None  # refit lazily

    def clear(self) -> None:
        """Forget the level (it has moved); the residuals, i.e. the noise level, are kept."""
        self.values.clear()
        self.feats.clear()
        self.history.clear()
        self.pending.clear()
        self._kept_slope = self._fit()  # the response to load is the system's, not the level's: keep it
        self._slope, self._design = None, None

    def __len__(self) -> int:
        return len(self.values)

    def _fit(self) -> tuple[float, ...]:
        if self._slope is None:
            rows = [(x, f) for x, f, _ in self.history]
            # From `min_residuals` points on the slope is always used. With `early_fit` (latency:
            # a fresh monitor's first buckets follow the load as much as a warm one's) it is
            # fitted as soon as the residual variance has two degrees of freedom (d + 3 points),
            # kept only where it predicts out of sample (`_ols_fit`'s `select`), and the
            # prediction's own error is charged to the scale (`_leverage`), not ignored.
            need = len(rows[0][1]) + 3 if rows and self.early_fit else self.min_residuals
            fitted = (_ols_fit(rows, select=len(rows) < self.min_residuals)
                      if rows and len(rows) >= need else None)
            if fitted is not None:
                b, self._design, predicts = fitted
                # Not selected: a flat level, but the design stays, so a load beyond what the
                # history has seen still widens the scale (the response there is unknown).
                self._slope = b if predicts else self._kept_slope
            else:
                self._slope, self._design = self._kept_slope, None
            self._n_ref = statistics.median(self.res_counts) if self.res_counts else 1.0
            self._gamma = (_count_exponent(self.residuals, self.res_counts, self._n_ref)
                           if len(self.residuals) >= self.min_residuals and self._n_ref > 0 else 0.0)
        return self._slope

    def _adjusted(self, features: tuple[float, ...]) -> list[float] | None:
        """The window's values moved to zero load by the fitted slope (None: no usable slope)."""
        b = self._fit()
        if not b or len(features) != len(b) or any(len(f) != len(b) for f in self.feats):
            return None
        return [v - _dot(b, f) for v, f in zip(self.values, self.feats)]

    def center(self, features: tuple[float, ...] = ()) -> float:
        adj = self._adjusted(features)
        if adj is None:
            return statistics.median(self.values)
        level = statistics.median(adj) + _dot(self._fit(), features)
        # Latency is positive and convex in load: a line through the busy buckets can cross
        # zero at a quiet one; below every value the fit's history holds it is the line, not the
        # system. The history (up to `scale_size` buckets), not the 30-value window: after half
        # an hour of busy buckets the window's minimum is a busy value, and a quiet bucket held
        # to it read as a fall ("down" alarms on every drop in load).
        return max(level, min(v for v, _, _ in self.history)) if self.floored else level

    def _leverage(self, features: tuple[float, ...]) -> float:
        """h(f) = 1/n + (f - mean)' S^-1 (f - mean) of the fit: the prediction's own variance over sigma^2.

        Why: a level read off few buckets, or a slope carried to a load the history has not
        seen, is itself uncertain; the residual at f has variance sigma^2 (1 + h(f)).
        """
        d = self._design
        if d is None or len(features) != len(d.mean):
            return 1.0 / max(1, len(self.values))
        u = [f - m for f, m in zip(features, d.mean)]
        return 1.0 / d.n + sum(u[i] * d.inv[i][j] * u[j] for i in range(len(u)) for j in range(len(u)))

    def weight(self, count: float) -> float:
        """Multiplier turning this bucket's residual into the reference bucket size's."""
        self._fit()
        if self._gamma <= 0 or count <= 0 or self._n_ref <= 0:
            return 1.0
        return (count / self._n_ref) ** self._gamma

    def unseen(self, features: tuple[float, ...]) -> bool:
        """A young load-driven baseline asked about a load its history has not seen (h(f) > 1).

        Why: the prediction's own variance there exceeds the noise's, and a fresh history that
        saw no load swing could not learn the response at all (a surge minutes after start);
        such a bucket is no evidence either way: it is learned, not tested. Once
        `min_residuals` buckets are in, the leverage only widens the scale.
        """
        if not self.early_fit or len(self.residuals) >= self.min_residuals:
            return False
        self._fit()
        return self._design is not None and self._leverage(features) > 1.0

    def scale(self, spec: SignalSpec, features: tuple[float, ...] = ()) -> float:
        """Noise scale for the sequential test: robust sigma times the autocorrelation inflation.

        With 30+ residuals seen (out-of-sample errors, so they already carry the average
        prediction error 1 + p/n) the scale is only widened where the load is further from
        the history's than average; before that, sigma comes from the fit's in-sample
        residuals (degrees-of-freedom corrected) times sqrt(1 + h(f)).
        """
        med = statistics.median(self.values)
        self._fit()
        d = len(self._design.mean) if self._design is not None else 0
        if len(self.residuals) >= self.min_residuals:
            if self._gamma > 0:
                res = deque(r * self.weight(n) for r, n in zip(self.residuals, self.res_counts))
            else:
                res = self.residuals
            mad = statistics.median(abs(r) for r in res) * 1.4826
            mad *= math.sqrt(autocorrelation_inflation(res, mad, lags=self.lags))
            if self._design is not None:
                mad *= math.sqrt(max(1.0, (1 + self._leverage(features)) / (1 + (d + 1) / self._design.n)))
        else:
            adj = self._adjusted(features)
            if adj is not None:
                n = len(adj)
                m = statistics.median(adj)
                dev = deque(v - m for v in adj)
                mad = statistics.median(abs(v) for v in dev) * 1.4826 * math.sqrt(n / max(1, n - d - 1))
                mad *= math.sqrt(1 + self._leverage(features))
            else:
                dev = deque(v - med for v in self.values)
                mad = statistics.median(abs(v) for v in dev) * 1.4826
                if self._design is not None:
                    mad *= math.sqrt(1 + self._leverage(features))
            # the same long-run variance as the warm scale's, read off the window itself
            mad *= math.sqrt(autocorrelation_inflation(dev, mad, lags=self.lags))
        return max(mad, spec.rel_floor * abs(med), spec.abs_floor)


def _dot(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum(x * y for x, y in zip(a, b))


@dataclass(frozen=True, slots=True)
class _Design:
    """What the leverage of a new point needs from a fit: n, the feature means, S^-1."""

    n: int
    mean: tuple[float, ...]
    inv: list[list[float]]


def _ols_fit(rows: list[tuple[float, tuple[float, ...]]],
             select: bool = False) -> tuple[tuple[float, ...], _Design, bool] | None:
    """Least-squares slopes of x on the features (intercept free), the fit's design, and whether the
    slope predicts x out of sample (always True without `select`); None if singular.

    x is not winsorised: clipping the high-load buckets' values (not their load) would bias
    the slope low and leave the bursts it should explain.
    """
    if not rows or not rows[0][1] or any(len(f) != len(rows[0][1]) for _, f in rows):
        return None
    xs = [x for x, _ in rows]
    d = len(rows[0][1])
    fm = [statistics.fmean(f[j] for _, f in rows) for j in range(d)]
    xm = statistics.fmean(xs)
    # normal equations on centred data (d is 1-3: Gauss-Jordan by hand, carrying the inverse)
    a = [[sum((f[i] - fm[i]) * (f[j] - fm[j]) for _, f in rows) for j in range(d)] for i in range(d)]
    y = [sum((f[i] - fm[i]) * (x - xm) for (_, f), x in zip(rows, xs)) for i in range(d)]
    inv = [[1.0 if i == j else 0.0 for j in range(d)] for i in range(d)]
    big = max(1.0, max(abs(v) for row in a for v in row))
    for i in range(d):
        piv = a[i][i]
        if abs(piv) <= 1e-12 * big:
            return None
        for j in range(d):
            if j != i:
                r = a[j][i] / piv
                a[j] = [aj - r * ai for aj, ai in zip(a[j], a[i])]
                inv[j] = [bj - r * bi for bj, bi in zip(inv[j], inv[i])]
                y[j] -= r * y[i]
    inv = [[v / a[i][i] for v in inv[i]] for i in range(d)]
    b = tuple(y[i] / a[i][i] for i in range(d))
    design = _Design(len(rows), tuple(fm), inv)
    # Selected only if the load predicts the value out of sample: leave-one-out errors
    # e_i / (1 - h_i) (closed form) against the plain level's, compared robustly (median |.|).
    # A signal the load does not move (a share, a price) then keeps a flat level instead of
    # a slope fitted to noise.
    if not select:
        return b, design, True
    n = len(rows)
    loo_fit, loo_flat = [], []
    for x, f in rows:
        u = [fi - mi for fi, mi in zip(f, fm)]
        h = 1.0 / n + sum(u[i] * inv[i][j] * u[j] for i in range(d) for j in range(d))
        loo_fit.append(abs(x - xm - _dot(b, tuple(u))) / max(1e-9, 1.0 - h))
        loo_flat.append(abs(x - xm) * n / (n - 1))
    return b, design, statistics.median(loo_fit) < statistics.median(loo_flat)


def _count_exponent(residuals: deque[float], counts: deque[float], n_ref: float) -> float:
    """gamma in |residual| ~ (n / n_ref)^-gamma, least squares on logs, clamped to [0, 0.5].

    0.5 is the sampling-noise law (a mean over n requests); 0 is noise that does not shrink
    with n. Clamped so that neither a fit's noise nor a busy bucket's z can grow past those.
    """
    pairs = [(math.log(n / n_ref), math.log(abs(r))) for r, n in zip(residuals, counts) if n > 0 and r != 0]
    if len(pairs) < 10:
        return 0.0
    lm = statistics.fmean(p for p, _ in pairs)
    rm = statistics.fmean(q for _, q in pairs)
    var = sum((p - lm) ** 2 for p, _ in pairs)
    if var <= 1e-9:
        return 0.0
    slope = sum((p - lm) * (q - rm) for p, q in pairs) / var
    return min(max(-slope, 0.0), 0.5)


def autocorrelation_inflation(residuals: deque[float], sigma: float, max_rho: float = 0.8, lags: int = 1) -> float:
    """Long-run variance over the one-bucket variance: 1 + 2 sum_k (1 - k/(m+1)) rho_k, k = 1..m.

    A cumulative test sums buckets; with positively correlated neighbours the sum of n
    buckets varies more than n sigma^2, so the threshold's run length would not hold. The
    autocorrelations are summed up to lag m = `lags` (the buckets an alarm's evidence spans)
    with Bartlett weights, on residuals winsorised at 3 sigma so one wild bucket does not
    drive them; with m = 1 it is the AR(1) factor (1 + rho) / (1 - rho). Never below 1.
    """
    if sigma <= 0 or len(residuals) < 3:
        return 1.0
    r = [min(max(x, -3 * sigma), 3 * sigma) for x in residuals]
    mean = statistics.fmean(r)
    var = sum((x - mean) ** 2 for x in r)
    if var <= 0:
        return 1.0
    rho1 = sum((r[i] - mean) * (r[i + 1] - mean) for i in range(len(r) - 1)) / var
    if lags <= 1:
        rho = min(max(rho1, 0.0), max_rho)
        return (1 + rho) / (1 - rho)
    total = 0.0
    for k in range(1, min(lags, len(r) - 2) + 1):
        rho_k = sum((r[i] - mean) * (r[i + k] - mean) for i in range(len(r) - k)) / var
        total += (1 - k / (lags + 1)) * rho_k
    return min(max(1.0 + 2.0 * total, 1.0), (1 + max_rho) / (1 - max_rho))
