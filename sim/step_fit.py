"""Least-squares fit of the roofline step model (thrifty/profiles.py) to measured engine steps.

The model is `overhead + max(weight_read, token_compute * tokens) + decode_extra * decode
tokens + context_cost * context tokens + pair_cost * prefill attention pairs`. For a fixed
(weight_read, token_compute) the rest is linear, so the fit searches those two on a log grid
refined around the best cell and solves the four linear constants exactly (non-negative, by
trying every subset of them), minimising
the squared *relative* error: a 6 ms decode step and a 240 ms prefill weigh the same.

Pure Python (no numpy): `thrifty engine setup-cpu` runs it in the base install.
Used by `thrifty bench sim-calibration --gpu` (the H200 measurement) and by the CPU profile
measurement (thrifty/engine/cpu_profile.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StepPoint:
    """One measured engine step: what it did and how long it took."""

    label: str
    prefill_tokens: float
    decode_tokens: float  # one per decoding sequence
    context_tokens: float  # KV tokens the decode attention reads (sum over decoding sequences)
    seconds: float
    prefill_pairs: float = 0.0  # prefill attention pairs: n * (c + n/2) for n prompt tokens after c cached


@dataclass(frozen=True, slots=True)
class StepFit:
    step_overhead_s: float
    weight_read_s: float
    prefill_token_s: float  # compute per token in the step (prompt and decode tokens alike)
    decode_token_s: float
    context_token_s: float
    prefill_pair_s: float
    rms_rel_error: float
    max_rel_error: float

    def predict(self, point: StepPoint) -> float:
        return step_seconds(self.step_overhead_s, self.weight_read_s, self.prefill_token_s, self.decode_token_s,
                            self.context_token_s, self.prefill_pair_s, point)


def step_seconds(overhead: float, weight_read: float, token_compute: float, decode_extra: float, context: float,
                 pair: float, point: StepPoint) -> float:
    tokens = point.prefill_tokens + point.decode_tokens
    return (overhead + max(weight_read, token_compute * tokens) + decode_extra * point.decode_tokens
            + context * point.context_tokens + pair * point.prefill_pairs)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination for a small dense system; None when singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-300:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, n + 1):
                    m[r][c] -= f * m[col][c]
    return [m[i][n] / m[i][i] for i in range(n)]


def _linear_part(points: list[StepPoint], weight_read: float, token_compute: float) -> tuple[float, list[float]]:
    """Best non-negative (overhead, decode_extra, context, pair) for fixed roofline terms: (loss, constants)."""
    rows = []  # relative residual r = (fixed + x . f) / y - 1  =>  x . (f / y) - (1 - fixed / y)
    for p in points:
        fixed = max(weight_read, token_compute * (p.prefill_tokens + p.decode_tokens))
        rows.append(([1.0 / p.seconds, p.decode_tokens / p.seconds, p.context_tokens / p.seconds,
                      p.prefill_pairs / p.seconds], 1.0 - fixed / p.seconds))
    best = (math.inf, [0.0] * 4)
    for size in range(5):
        for free in itertools.combinations(range(4), size):
            x = [0.0] * 4
            if free:
                ata = [[sum(f[i] * f[j] for f, _ in rows) for j in free] for i in free]
                atb = [sum(f[i] * t for f, t in rows) for i in free]
                sol = _solve(ata, atb)
                if sol is None or min(sol) < 0:
                    continue
                for i, v in zip(free, sol, strict=True):
                    x[i] = v
            loss = sum((sum(xi * fi for xi, fi in zip(x, f, strict=True)) - t) ** 2 for f, t in rows)
            if loss < best[0]:
                best = (loss, x)
    return best


def fit_step_model(points: list[StepPoint], *, with_weight_read: bool = True) -> StepFit:
    """The roofline constants that minimise the RMS relative error over `points`.

    `with_weight_read=False` pins the weight read to 0 (a compute-bound engine, e.g. on a CPU
    where too few step shapes were measured to tell the two apart).
    """
    if len(points) < 3:
        raise ValueError("need at least 3 measured steps to fit the step model")
    if any(p.seconds <= 0 for p in points):
        raise ValueError("measured step times must be > 0")
    # the per-token compute is bounded by the cheapest step per token; the weight read by the cheapest step
    per_token = [p.seconds / (p.prefill_tokens + p.decode_tokens) for p in points if p.prefill_tokens + p.decode_tokens]
    if not per_token:
        raise ValueError("no measured step processed any token")
    p_hi, w_hi = min(per_token) * 1.5, min(p.seconds for p in points)
    p_lo, w_lo = p_hi * 1e-3, w_hi * 1e-3
    best = (math.inf, 0.0, 0.0, [0.0] * 4)
    for _ in range(5):  # coarse-to-fine log grid over (token_compute, weight_read)
        steps = 24
        ps = [p_lo * (p_hi / p_lo) ** (i / steps) for i in range(steps + 1)]
        ws = [w_lo * (w_hi / w_lo) ** (i / steps) for i in range(steps + 1)] if with_weight_read else [0.0]
        for tc in ps:
            for w in ws:
                loss, x = _linear_part(points, w, tc)
                if loss < best[0]:
                    best = (loss, w, tc, x)
        _, w, tc, _ = best
        p_lo, p_hi = tc * (p_lo / p_hi) ** (2 / steps), tc * (p_hi / p_lo) ** (2 / steps)
        if with_weight_read and w > 0:
            ratio = (w_hi / w_lo) ** (2 / steps)
            w_lo, w_hi = w / ratio, w * ratio
    loss, w, tc, (o, s, k, q) = best
    fit = StepFit(o, w, tc, s, k, q, 0.0, 0.0)
    errors = [fit.predict(p) / p.seconds - 1 for p in points]
    return StepFit(o, w, tc, s, k, q, math.sqrt(sum(e * e for e in errors) / len(errors)), max(abs(e) for e in errors))


def load_step_time_json(path: str) -> list[StepPoint]:
    """The measured steps in a ../shared/tools/gpu/step_time.py result: lone prefills, decode, mixed.

    CUDA-graph times (what a serving engine replays); decode context is B sequences x L tokens.
    Raises ValueError with one line naming the file when it is unreadable or not of that shape.
    """
    import json

    try:
        with open(path) as f:
            data = json.load(f)
        points = [StepPoint(f"prefill P={r['tokens']}", r["tokens"], 0, 0, r["graph_ms"] / 1e3, r["tokens"] ** 2 / 2)
                  for r in data["prefill"]]
        points += [StepPoint(f"decode B={r['B']} L={r['L']}", 0, r["B"], r["B"] * r["L"], r["graph_ms"] / 1e3)
                   for r in data["decode"]]
        points += [StepPoint(f"mixed P={r['P']} B={r['B']} L={r['L']}", r["P"], r["B"], r["B"] * r["L"],
                             r["graph_ms"] / 1e3, r["P"] ** 2 / 2) for r in data.get("mixed", [])]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a step_time.py result (missing or malformed {exc})") from None
    if not points or any(not isinstance(p.seconds, float) or p.seconds <= 0 for p in points):
        raise ValueError(f"{path}: no measured steps with positive times")
    return points
