"""The cost bench's engines: simulated tiers under static or autoscaled provisioning.

Each tier is a `thrifty.sim.fleet.SimTier` of `thrifty.sim.model`
replicas. Dispatch inside a tier is the sidecar's `Balancer`: `round_robin` (the baseline: a
plain Service spreading requests evenly) or the sidecar's own policy with admission control.
Provisioning is either static at the peak
(the smallest replica count per tier that keeps the TTFT SLO for >= 99% of its requests
with none shed, searched in this run) or the controller's `ControlPlane` over all tiers at
once (coupled through their routing shares), fed what the sidecar and the Deployment
status report (`thrifty.bench.autoscale.TierProbe`: the telemetry windows a sidecar sends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from thrifty.bench.autoscale import TierProbe, fleet_config
from thrifty.bench._control import ControlledFleet
from thrifty.sim.fleet import Served, SimTier, replay
from thrifty.profiles import GpuProfile, engine_costs
from thrifty.sim.model import SpeculativeSim

TICK_S = 5.0
MAX_WAIT_S = 30.0  # config admission.max_wait_s: shed after this long in the sidecar queue
SLO_TARGET = 0.99
WARMUP_S = 30.0  # no control rounds in the first windows: the controller has no rate estimate yet


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    profile: GpuProfile
    speculative: SpeculativeSim | None = None
    gpu_hour_usd: float = 0.0  # price per GPU of this tier's type


@dataclass(frozen=True, slots=True)
class FleetSettings:
    balancer: bool  # least-loaded (sidecar balancer) vs round-robin
    autoscale: bool  # the controller (ControlPlane) vs static peak
    startup_s: float = 90.0
    slo_ttft_s: float = 2.0


@dataclass(slots=True)
class TierRun:
    replicas: int  # static count, or the most the autoscaler held at once
    gpu_hours: float
    dollars: float
    requests: int
    within_slo: int
    dropped: int
    scale_actions: int
    served: list[Served] = field(default_factory=list)  # tag = index into the tier's arrivals (the ledger's cost split)

    @property
    def attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0


@dataclass(slots=True)
class FleetRun:
    tiers: dict[str, TierRun] = field(default_factory=dict)

    @property
    def dollars(self) -> float:
        return sum(t.dollars for t in self.tiers.values())

    @property
    def gpu_hours(self) -> float:
        return sum(t.gpu_hours for t in self.tiers.values())


@dataclass
@dataclass
class RoundRobinTier(SimTier):
    """The baseline's tier: a plain Service sends each request to the next ready pod in turn
    (the balancer's `round_robin` policy, no admission control): the pod's engine queues what
    it cannot run yet, as vLLM does."""

    policy: str = "round_robin"
    saturation_waiting: int = 1 << 30
    saturation_kv: float = 1.01


Arrival = tuple[float, int, int]  # (arrival s, prompt tokens, output tokens)


def _make_tier(spec: TierSpec, balancer: bool) -> SimTier:
    cls = SimTier if balancer else RoundRobinTier
    return cls(spec.name, spec.profile, speculative=spec.speculative, max_wait_s=MAX_WAIT_S)


def _tier_run(tier: SimTier, spec: TierSpec, end: float, replicas: int, slo_ttft_s: float) -> TierRun:
    gpu_hours = tier.gpu_seconds(end) / 3600
    ok = [s for s in tier.served if s.ttft is not None]
    return TierRun(
        replicas=replicas, gpu_hours=gpu_hours, dollars=gpu_hours * spec.gpu_hour_usd, requests=len(tier.served),
        within_slo=sum(1 for s in ok if s.ttft <= slo_ttft_s), dropped=len(tier.served) - len(ok),
        scale_actions=tier.scale_actions, served=tier.served,
    )


def run_static(spec: TierSpec, arrivals: list[Arrival], replicas: int, settings: FleetSettings) -> TierRun:
    tier = _make_tier(spec, settings.balancer)
    tier.start(replicas, 0.0, ready=True)
    feed = [(t, spec.name, p, o, i, ()) for i, (t, p, o) in enumerate(arrivals)]
    end = replay({spec.name: tier}, feed, TICK_S, lambda now: None)
    return _tier_run(tier, spec, end, replicas, settings.slo_ttft_s)


def load_estimate(spec: TierSpec, arrivals: list[Arrival], bucket_s: float = 60.0) -> int:
    """Replicas the busiest minute needs by the profile's per-token engine time (a search start)."""
    costs = engine_costs(spec.profile)
    busy: dict[int, float] = {}
    for t, p, o in arrivals:
        b = int(t // bucket_s)
        busy[b] = busy.get(b, 0.0) + p * costs["prefill_s_per_token"] + o * costs["decode_s_per_token"]
    return max(1, math.ceil(max(busy.values(), default=0.0) / bucket_s))


def static_peak(spec: TierSpec, arrivals: list[Arrival], settings: FleetSettings, hint: int | None = None,
                max_replicas: int = 512) -> TierRun:
    """The smallest fixed replica count meeting the SLO with nothing shed.

    Assumes more replicas never hurt; starts at `hint` (or the load estimate) and walks
    down while the SLO holds, or up (doubling, then bisecting) until it holds.
    """
    if not arrivals:
        return TierRun(0, 0.0, 0.0, 0, 0, 0, 0)

    def good(r: TierRun) -> bool:
        return r.dropped == 0 and r.attainment >= SLO_TARGET

    runs: dict[int, TierRun] = {}

    def run(n: int) -> TierRun:
        if n not in runs:
            runs[n] = run_static(spec, arrivals, n, settings)
        return runs[n]

    n = min(max(1, hint or load_estimate(spec, arrivals)), max_replicas)
    if good(run(n)):
        while n > 1 and good(run(n - 1)):
            n -= 1
        return runs[n]
    lo, hi = n, n
    while not good(run(hi)) and hi < max_replicas:
        lo, hi = hi, min(hi * 2, max_replicas)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if good(run(mid)) else (mid, hi)
    return runs[hi]


def run_autoscaled(specs: list[TierSpec], arrivals: dict[str, list[Arrival]], initial: dict[str, int],
                   settings: FleetSettings, max_replicas: dict[str, int]) -> FleetRun:
    """All tiers at once under the real control plane (`bench/_control.py`), fed the tiers'
    telemetry, starting from `initial` ready replicas."""
    tiers = {s.name: _make_tier(s, settings.balancer) for s in specs}
    for name, tier in tiers.items():
        tier.start(max(1, initial.get(name, 1)), 0.0, ready=True)
    config = fleet_config([(s.name, s.profile, max_replicas[s.name]) for s in specs],
                          startup_s=settings.startup_s, slo_ttft_s=settings.slo_ttft_s,
                          speculative={s.name: s.speculative for s in specs if s.speculative is not None})
    control = ControlledFleet(config)
    probes = {name: TierProbe(tier, slo_ttft_s=settings.slo_ttft_s, plane=control.plane)
              for name, tier in tiers.items()}
    control.adopt({n: len(t.active()) for n, t in tiers.items()})
    peak = {n: len(t.active()) for n, t in tiers.items()}

    def on_tick(now: float) -> None:
        for probe in probes.values():
            probe.observe(now)
        if now < WARMUP_S:  # the first windows: a ramp from 0 is not a trend
            return
        targets = control.targets(now, {n: len(t.active()) for n, t in tiers.items()})
        for n, tier in tiers.items():
            want = targets[n]
            if want != len(tier.active()):
                tier.scale_to(want, now)
            peak[n] = max(peak[n], len(tier.active()))

    feed = [(t, name, p, o, i, ()) for name, arr in arrivals.items() for i, (t, p, o) in enumerate(arr)]
    end = replay(tiers, feed, TICK_S, on_tick)
    control.close()
    spec_of = {s.name: s for s in specs}
    return FleetRun({n: _tier_run(t, spec_of[n], end, peak[n], settings.slo_ttft_s) for n, t in tiers.items()})


def run_static_fleet(specs: list[TierSpec], arrivals: dict[str, list[Arrival]], settings: FleetSettings,
                     hints: dict[str, int] | None = None) -> FleetRun:
    """Each tier at its own static peak (static tiers do not interact)."""
    hints = hints or {}
    return FleetRun({s.name: static_peak(s, arrivals.get(s.name, []), settings, hints.get(s.name)) for s in specs})
