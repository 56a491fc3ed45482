"""Request traces for the benches: one loader for both public formats, and seeded variants.

`load_trace` reads either format in ../shared/data/traces, told apart by the first line:
- Azure LLM inference trace CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`;
- Mooncake JSON lines: `{"timestamp": ms, "input_length": n, "output_length": n, "hash_ids": [...]}`
  (`hash_ids` are dropped: the autoscale, drift and cost benches need arrivals and token counts).
Arrivals are seconds since the first request, sorted. Bad input raises `TraceError` with a
one-line message naming the file (and line).

`make_variant(trace, kind, seed)` reshapes a trace so a policy is tried on traffic it was not
tuned on. Every kind is deterministic for a given seed; requests added by a kind are copies of
the trace's own requests (its own token mix) moved in time, so only the named property
changes. Why these: they are the shapes that broke the shipped policy (issue 16: long
prompts, minute-scale bursts, a 10-minute 2x surge, a larger service).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from thrifty.sim.fleet import TraceError, TraceRequest, load_azure_trace

__all__ = ["TraceError", "TraceRequest", "VARIANTS", "load_trace", "make_variant"]

VARIANTS = ("prefill-heavy", "bursty", "diurnal", "surge", "rate2x", "rate4x")

# prefill-heavy: prompts this many times longer, outputs this many times shorter (the
# code-completion shape: prompts of thousands of tokens, short answers).
PREFILL_PROMPT_X = 3.0
PREFILL_OUTPUT_X = 1.0 / 3.0
# bursty: time cut into slots; a slot is hot with this probability and then carries
# BURST_X times its requests, cold slots keep COLD_KEEP of theirs (mean rate kept:
# 0.2 x 3 + 0.8 x 0.5 = 1).
BURST_SLOT_S = 30.0
BURST_HOT_P = 0.2
BURST_X = 3
COLD_KEEP = 0.5
# diurnal: one full day's cycle squeezed into the trace, rate x (1 - A cos(2 pi t / span)):
# starts at its trough (1 - A), peaks at 1 + A mid-trace; the mean rate is kept.
DIURNAL_AMPLITUDE = 0.6
# surge: the rate doubles for SURGE_S, starting at a seeded point in the middle of the trace.
SURGE_S = 600.0
SURGE_X = 2
# Added copies move this far (uniform +-) from the request they copy, so they are not
# lock-step duplicates but keep the minute-scale shape.
COPY_JITTER_S = 5.0
RATE_JITTER_S = 60.0


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Azure CSV or Mooncake JSONL (sniffed from the first non-empty line); first `limit` rows."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise TraceError(f"{path}: limit must be >= 1, got {limit}")
    try:
        with path.open(newline="") as f:
            first = next((line for line in f if line.strip()), "")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file (expected an Azure CSV or Mooncake JSON lines)") from None
    head = first.lstrip("\ufeff").lstrip()
    if head.startswith("TIMESTAMP"):
        return load_azure_trace(path, limit)
    if head.startswith("{"):
        return _load_mooncake(path, limit)
    raise TraceError(f"{path}: expected an Azure CSV (header TIMESTAMP,ContextTokens,GeneratedTokens) "
                     "or Mooncake JSON lines ({\"timestamp\", \"input_length\", \"output_length\"})")


def _load_mooncake(path: Path, limit: int | None) -> list[TraceRequest]:
    rows: list[tuple[float, int, int]] = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                t, prompt, output = float(row["timestamp"]) / 1000.0, int(row["input_length"]), int(row["output_length"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise TraceError(f"{path}: line {n}: expected a JSON object with numeric timestamp (ms), "
                                 "input_length and output_length") from None
            if not math.isfinite(t) or t < 0:
                raise TraceError(f"{path}: line {n}: timestamp must be a finite number of ms >= 0")
            rows.append((t, max(1, prompt), max(1, output)))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise TraceError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [TraceRequest(t - t0, p, o) for t, p, o in rows]


def make_variant(trace: list[TraceRequest], kind: str, seed: int = 0) -> list[TraceRequest]:
    """The trace reshaped as `kind` (one of VARIANTS), deterministic for `seed`; sorted by arrival.

    - prefill-heavy: every prompt x3, every output /3 (at least 1 token); arrivals unchanged.
    - bursty: 30 s slots, each hot with p 0.2 (its requests x3, copies within +-5 s) or cold
      (each request kept with p 0.5): same mean rate, minute-scale bursts ~3x the mean.
    - diurnal: rate x (1 - 0.6 cos(2 pi t / span)) by thinning and copying (+-5 s): a day's
      trough-peak-trough in one trace, mean rate kept.
    - surge: a 10-minute 2x step (each request in it copied, +-5 s), starting at a seeded
      point between 25% and 60% of the trace (at 0 for traces shorter than the surge).
    - rate2x / rate4x: each request plus 1 / 3 copies moved uniformly within +-60 s (clipped
      to the trace's span): a service 2x / 4x larger with the same minute-scale shape.
    """
    if kind not in VARIANTS:
        raise TraceError(f"unknown trace variant {kind!r}; expected one of {', '.join(VARIANTS)}")
    if not trace:
        return []
    rng = random.Random(f"{kind}:{seed}")
    span = max(r.arrival for r in trace)
    out: list[TraceRequest]
    if kind == "prefill-heavy":
        out = [TraceRequest(r.arrival, max(1, round(r.prompt_tokens * PREFILL_PROMPT_X)),
                            max(1, round(r.output_tokens * PREFILL_OUTPUT_X))) for r in trace]
    elif kind == "bursty":
        slots: dict[int, bool] = {}
        out = []
        for r in trace:
            s = int(r.arrival // BURST_SLOT_S)
            if s not in slots:
                slots[s] = rng.random() < BURST_HOT_P
            if slots[s]:
                out.append(r)
                out += _copies(r, BURST_X - 1, COPY_JITTER_S, span, rng)
            elif rng.random() < COLD_KEEP:
                out.append(r)
    elif kind == "diurnal":
        out = []
        for r in trace:
            m = 1.0 - DIURNAL_AMPLITUDE * math.cos(2 * math.pi * r.arrival / span) if span > 0 else 1.0
            k = int(m) + (1 if rng.random() < m - int(m) else 0)
            if k:
                out.append(r)
                out += _copies(r, k - 1, COPY_JITTER_S, span, rng)
    elif kind == "surge":
        start = rng.uniform(0.25, 0.6) * span if span > SURGE_S else 0.0
        out = []
        for r in trace:
            out.append(r)
            if start <= r.arrival < start + SURGE_S:
                out += _copies(r, SURGE_X - 1, COPY_JITTER_S, span, rng)
    else:  # rate2x, rate4x
        k = int(kind.removeprefix("rate").removesuffix("x"))
        out = []
        for r in trace:
            out.append(r)
            out += _copies(r, k - 1, RATE_JITTER_S, span, rng)
    out.sort(key=lambda r: r.arrival)
    return out


def _copies(r: TraceRequest, n: int, jitter_s: float, span: float, rng: random.Random) -> list[TraceRequest]:
    return [TraceRequest(min(span, max(0.0, r.arrival + rng.uniform(-jitter_s, jitter_s))), r.prompt_tokens,
                         r.output_tokens) for _ in range(n)]
