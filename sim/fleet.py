"""A simulated tier of replicas on a virtual clock, for the autoscale/drift/cost benches.

Stands in for a Kubernetes Deployment of vLLM pods (hundreds of GPU-hours cannot run
here): replicas take `startup_s` to become ready after a scale-up (pod scheduling,
image, weights, CUDA graphs), a scale-down drains (the replica takes no new requests
and is released only when its last request has finished, so none is lost), and
requests that arrive while no replica is ready wait in the sidecar's admission queue,
shed after `max_wait_s`. A prompt that does not fit the profile's context (max_model_len)
is rejected at submit, as vLLM answers it with a 400 before it queues: counted in
`rejected_too_long`, never served, shed or billed; an output that would run past the
context stops there (vLLM's finish_reason "length"). Each replica is `thrifty.sim.model.SimReplica`.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from thrifty.profiles import GpuProfile
from thrifty.sim.model import SimCompletion, SimReplica, SimRequest, SpeculativeSim


class TraceError(ValueError):
    """A trace file that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float  # seconds since the first request
    prompt_tokens: int
    output_tokens: int


def load_azure_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """`TIMESTAMP,ContextTokens,GeneratedTokens` (Azure LLM inference trace), times kept as-is."""
    path = Path(path)
    try:
        f = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    out: list[TraceRequest] = []
    t0: float | None = None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise TraceError(f"{path}: expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                ts = datetime.fromisoformat(row[0].strip()[:26]).timestamp()
                prompt, output = int(row[1]), int(row[2])
            except (ValueError, IndexError):
                raise TraceError(f"{path}: line {line}: expected TIMESTAMP,ContextTokens,GeneratedTokens") from None
            if t0 is None:
                t0 = ts
            out.append(TraceRequest(ts - t0, max(1, prompt), max(1, output)))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise TraceError(f"{path}: no requests")
    out.sort(key=lambda r: r.arrival)
    return out


@dataclass(slots=True)
class SimPod:
    id: int
    replica: SimReplica
    started: float  # when the scale-up asked for it (GPU billed from here)
    ready_at: float
    draining: bool = False
    stopped: float | None = None
    inflight: int = 0

    def ready(self, now: float) -> bool:
        return now >= self.ready_at and not self.draining and self.stopped is None


@dataclass(slots=True)
class Served:
    """One finished (or shed) request as the client saw it."""

    arrival: float
    ttft: float | None  # None = shed
    finish: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    tag: int = 0  # caller's own id


@dataclass
class SimTier:
    """One tier: pods, a least-loaded dispatcher, an admission queue."""

    name: str
    profile: GpuProfile
    startup_s: float = 90.0
    max_wait_s: float = 30.0
    speculative: SpeculativeSim | None = None
    saturation_waiting: int = 16  # config admission.saturation_waiting
    saturation_kv: float = 0.95  # config admission.saturation_kv
    pods: list[SimPod] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)
    scale_actions: int = 0
    rejected_too_long: int = 0  # prompts >= max_model_len: a 400 from the engine, not an SLO miss
    _ids: itertools.count = field(default_factory=itertools.count)
    _queue: deque = field(default_factory=deque)  # (TraceRequest-like, tag)
    _req_ids: itertools.count = field(default_factory=itertools.count)
    _meta: dict = field(default_factory=dict)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))
    _early: list = field(default_factory=list)  # finished while a dispatch advanced a pod

    def start(self, n: int, now: float, ready: bool = True) -> None:
        for _ in range(n):
            self._add_pod(now, now if ready else now + self.startup_s)

    def _add_pod(self, now: float, ready_at: float) -> None:
        i = next(self._ids)
        self.pods.append(SimPod(i, SimReplica(self.profile, speculative=self.speculative, seed=i), now, ready_at))

    # -- scaling -------------------------------------------------------------
    def active(self) -> list[SimPod]:
        return [p for p in self.pods if not p.draining and p.stopped is None]

    def scale_to(self, n: int, now: float) -> None:
        live = self.active()
        if n == len(live):
            return
        self.scale_actions += 1
        if n > len(live):
            for _ in range(n - len(live)):
                self._add_pod(now, now + self.startup_s)
            return
        # Remove starting pods first (no work yet), then the least busy: they drain.
        victims = sorted(live, key=lambda p: (p.ready_at <= now, p.inflight))[: len(live) - n]
        for p in victims:
            p.draining = True
            if p.inflight == 0:
                p.stopped = now

    # -- traffic ---------------------------------------------------------------
    def submit(self, arrival: float, prompt: int, output: int, now: float, tag: int = 0,
               hashes: tuple[int, ...] = ()) -> None:
        room = self.profile.max_model_len - prompt
        if room < 1:
            self.rejected_too_long += 1
            return
        self._queue.append((arrival, prompt, min(output, room), tag, hashes))
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        ready = [p for p in self.pods if p.ready(now)]
        while self._queue:
            arrival, prompt, output, tag, hashes = self._queue[0]
            if now - arrival > self.max_wait_s:
                self._queue.popleft()
                self.served.append(Served(arrival, None, now, prompt, output, tag=tag))
                continue
            pod = self._pick(ready, now)
            if pod is None:  # every replica saturated: the request waits in the sidecar
                return
            self._queue.popleft()
            rid = next(self._req_ids)
            self._meta[rid] = (pod, tag, arrival)
            pod.replica.submit(SimRequest(rid, arrival, prompt, output, hashes), now)
            pod.inflight += 1

    def _pick(self, ready: list[SimPod], now: float) -> SimPod | None:
        """Power of two choices on the sidecar's in-flight counts among unsaturated replicas.

        The sidecar's admission control: a saturated replica (engine queue or KV cache
        over the configured limits) takes no more. Only the sampled pair is brought up to
        `now` and checked, so a dispatch costs O(1) replicas; when both are saturated the
        rest are tried in random order.
        """
        if not ready:
            return None
        order = ready if len(ready) <= 2 else self._rng.sample(ready, len(ready))
        chosen: SimPod | None = None
        checked = 0
        for pod in order:
            self._early.extend(self._finish(c) for c in pod.replica.advance(now))
            r = pod.replica
            if r.waiting < self.saturation_waiting and r.kv_usage < self.saturation_kv:
                if chosen is None or (pod.inflight, pod.id) < (chosen.inflight, chosen.id):
                    chosen = pod
                checked += 1
                if checked == 2:
                    break
        return chosen

    def advance(self, now: float) -> list[Served]:
        """Run every pod to `now`; returns what finished."""
        done: list[Served] = self._early
        self._early = []
        for pod in self.pods:
            if pod.stopped is not None:
                continue
            for c in pod.replica.advance(now):
                done.append(self._finish(c))
            if pod.draining and pod.inflight == 0:
                pod.stopped = max(pod.ready_at if pod.ready_at <= now else pod.started, now)
        self._dispatch(now)
        return done

    def _finish(self, c: SimCompletion) -> Served:
        pod, tag, arrival = self._meta.pop(c.id)
        pod.inflight -= 1
        s = Served(arrival, c.first_token_time - arrival, c.finish_time, c.prompt_tokens, c.output_tokens,
                   c.cached_tokens, tag)
        self.served.append(s)
        return s

    # -- what the sidecar and the Deployment status would report ----------------
    def queue_depth(self) -> int:
        return len(self._queue)

    def gpu_seconds(self, now: float) -> float:
        g = self.profile.num_gpus
        return sum(((p.stopped if p.stopped is not None else now) - p.started) * g for p in self.pods)

    def counts(self, now: float) -> tuple[int, int]:
        """(ready, starting) among pods not being removed."""
        live = self.active()
        ready = sum(1 for p in live if p.ready_at <= now)
        return ready, len(live) - ready


def replay(tiers: dict[str, SimTier], arrivals: list[tuple[float, str, int, int, int, tuple[int, ...]]],
           tick_s: float, on_tick, end_pad_s: float = 600.0) -> float:
    """Drive arrivals (time, tier, prompt, output, tag, hashes) and call `on_tick(now)` every tick_s.

    Returns the virtual time when the replay ended (all work drained or shed, or `on_tick`
    returned True: the caller has seen enough, e.g. a policy already known to miss the SLO).
    """
    heap = list(arrivals)
    heapq.heapify(heap)
    now = 0.0
    next_tick = 0.0
    last = max(a[0] for a in arrivals) if arrivals else 0.0
    while heap or now < last + end_pad_s:
        t_arr = heap[0][0] if heap else float("inf")
        if next_tick <= t_arr:
            now = next_tick
            for tier in tiers.values():
                tier.advance(now)
            if on_tick(now):
                break
            next_tick += tick_s
            if not heap and all(p.inflight == 0 for t in tiers.values() for p in t.pods) \
                    and all(t.queue_depth() == 0 for t in tiers.values()):
                break
            continue
        t, name, prompt, output, tag, hashes = heapq.heappop(heap)
        now = t
        tiers[name].submit(t, prompt, output, now, tag, hashes)
    return now
