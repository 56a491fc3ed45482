"""The cost bench's quality loop: the savings ledger's control group and the shadow calls, costed in the fleet.

As in the sidecar (proxy/quality): a seeded draw puts `control_share` of the requests in
the control group, served by the baseline path (reference tier, no cache, no router; see
`run_levers`); of the other (treated) requests, `shadow_rate` of those not answered by the
exact cache are re-asked in the background: a cheaper answer or semantic hit of the
reference tier, a reference answer of the small tier (the counterfactual). Shadow calls
are load on the same simulated tiers and their dollars are charged to the treated group;
they are not client requests, so they count in no SLO figure.

Cost per request comes from the fleet as run: each tier's dollars (its GPU-hours) are split
over the requests it served by their engine time (the profile's per-token prefill and
decode seconds), so idle and start-up capacity is paid by the requests that needed it. A
cache hit costs nothing. The modelled cost of a request (`baseline_dollars`) is the same
tokens at the reference tier's cost per engine second in the same fleet, the sidecar's
definition. Measured savings and their interval come from the production function
(`thrifty.wire.quality.measured_savings`), not a copy.
"""

from __future__ import annotations

import numpy as np

from thrifty.bench._cost_caches import Outcome
from thrifty.profiles import engine_costs
from thrifty.wire.quality import LedgerGroup, measured_savings, wilson

SHADOW = -1  # owner of a shadow call in a tier's arrival list is (SHADOW, request index)


def draw_control(n: int, share: float, seed: int) -> np.ndarray:
    """Per request: True for the control group (seeded; independent of the workload's own draws)."""
    return np.random.default_rng([seed, 0x5A11]).random(n) < share


def shadow_draws(n: int, seed: int) -> np.ndarray:
    """Per request: the uniform draw the shadow sample compares with the rate (seeded; the
    online loop's verdicts and the fleet's shadow calls use the same one)."""
    return np.random.default_rng([seed, 0x5AD0]).random(n)


def shadow_calls(outcomes: list[Outcome], rate: float, seed: int, small: str, large: str,
                 routed: bool = True) -> list[tuple[int, str]]:
    """(request index, tier called) for each shadow call, as the sidecar's `QualityLoop.consider` draws them
    (the counterfactual call of a reference answer only when the router scored the request: `routed`)."""
    draws = shadow_draws(len(outcomes), seed)
    calls = []
    for i, o in enumerate(outcomes):
        if o.control or o.cache == "exact" or draws[i] >= rate:
            continue
        if o.cache == "semantic" or o.tier == small:
            calls.append((i, large))
        elif o.tier == large and routed:
            calls.append((i, small))  # the counterfactual: what the small tier would have answered
    return calls


def _work(costs: dict[str, float], prompt_tokens: int, output_tokens: int) -> float:
    """Engine seconds of one request at a tier's per-token costs (`engine_costs`)."""
    return prompt_tokens * costs["prefill_s_per_token"] + output_tokens * costs["decode_s_per_token"]


def ledger(outcomes: list[Outcome], tokens: list[tuple[int, int]], owners: dict[str, list[tuple[int, int]]],
           fleet, specs, large: str, confidence: float) -> dict:
    """The ledger of one fleet run.

    `owners[tier][k]` says whose the tier's k-th arrival was: (0, request index) for a client
    request, (SHADOW, request index) for a shadow call on its behalf. `tokens[i]` is request
    i's (prompt, output) tokens."""
    costs = {s.name: engine_costs(s.profile) for s in specs}
    dollars = np.zeros(len(outcomes))
    shadow_dollars = 0.0
    served_ok = np.zeros(len(outcomes), dtype=bool)
    total_work: dict[str, float] = {}
    for name, run in fleet.tiers.items():
        ok = [s for s in run.served if s.ttft is not None]
        work = np.array([_work(costs[name], s.prompt_tokens, s.output_tokens) for s in ok])
        total_work[name] = float(work.sum()) if ok else 0.0
        if not ok or work.sum() <= 0:
            continue
        share = run.dollars * work / work.sum()
        for s, d in zip(ok, share, strict=True):
            kind, i = owners[name][s.tag]
            if kind == SHADOW:
                shadow_dollars += d
            else:
                dollars[i] += d
                served_ok[i] = True
    for i, o in enumerate(outcomes):
        if o.cache is not None:
            served_ok[i] = True  # answered at once, at no engine cost
    ref = fleet.tiers.get(large)
    ref_work = total_work.get(large, 0.0)
    per_work = ref.dollars / ref_work if ref and ref_work > 0 else 0.0
    baseline = np.array([per_work * _work(costs[large], p, o) for p, o in tokens]) if per_work else \
        np.zeros(len(outcomes))
    recovery = {s.name: s.profile.quality_recovery for s in specs}
    groups = {g: LedgerGroup(g) for g in ("control", "treated")}
    for i, o in enumerate(outcomes):
        if not served_ok[i]:
            continue  # shed: the sidecar's ledger counts only answered requests
        g = groups["control" if o.control else "treated"]
        g.requests += 1
        g.dollars += dollars[i]
        g.dollars_sq += dollars[i] ** 2
        g.baseline_dollars += baseline[i]
        g.judged += 1  # the bench knows every answer's label: each request is "judged"
        g.quality_sum += o.quality * recovery.get(o.source or "", 1.0)
    groups["treated"].dollars += shadow_dollars  # shadow spend is the treated group's (Ledger.spend)
    s = measured_savings(groups["control"], groups["treated"], confidence)
    two_sided = 1 - (1 - confidence) / 2  # wilson() is one-sided per end

    def quality(g: LedgerGroup) -> dict:
        if g.judged == 0:
            return {"mean": None, "interval": None}
        lo, hi = wilson(g.quality_sum, g.judged, two_sided)
        return {"mean": round(g.quality_sum / g.judged, 4), "interval": [round(lo, 4), round(hi, 4)]}

    interval = None if s["measured"] is None else [round(s["measured_lower"], 4), round(s["measured_upper"], 4)]
    return {
        "control_requests": groups["control"].requests,
        "treated_requests": groups["treated"].requests,
        "measured_savings": None if s["measured"] is None else round(s["measured"], 4),
        "interval": interval,
        "confidence": confidence,
        "modelled_savings": None if s["modelled"] is None else round(s["modelled"], 4),
        "agree": bool(interval is not None and s["modelled"] is not None
                      and s["measured_lower"] <= s["modelled"] <= s["measured_upper"]),
        "control_cost_per_request": _per(groups["control"]),
        "treated_cost_per_request": _per(groups["treated"]),
        "shadow_dollars": round(shadow_dollars, 4),
        "control_quality": quality(groups["control"]),
        "treated_quality": quality(groups["treated"]),
    }


def _per(g: LedgerGroup) -> float | None:
    return round(g.dollars / g.requests, 6) if g.requests else None
