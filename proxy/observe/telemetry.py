"""The sidecar's side of the telemetry stream to the controller.

`TelemetryClient` reads the sidecar's own Prometheus `CollectorRegistry` each interval,
turns the counters and histograms into deltas since the last window the controller
acknowledged receiving (so nothing is lost or counted twice across a reconnect: the
first window after an outage covers the whole gap and says so with `catch_up`), and
hands pushed policy to `on_policy`. While the controller is away it retries with
capped exponential back-off and the sidecar keeps serving on the last policy.

With a token, each stream starts with the mutual handshake of `thrifty.wire.auth`: a
controller that cannot prove it knows the token (say, a process that bound the port
while the controller was down) is disconnected before any of its policy is applied.
`thrifty_controller_connected` (on the sidecar's registry) is 1 while an authenticated
stream is up.

Metrics read (docs/metrics.md): thrifty_requests_total, thrifty_tokens_total,
thrifty_cost_dollars_total, thrifty_baseline_cost_dollars_total,
thrifty_cache_baseline_cost_dollars_total, thrifty_ttft_seconds,
thrifty_itl_seconds, thrifty_queue_depth, thrifty_router_decisions_total,
thrifty_replica_{up,waiting,running,kv_cache_usage,inflight}, and, where the replica's
/metrics has them, thrifty_replica_{prompt,generation}_tokens and
thrifty_replica_spec_{draft,accepted}_tokens (gauges holding the replica's
vllm:{prompt,generation}_tokens_total and vllm:spec_decode_num_{draft,accepted}_tokens_total,
sent as deltas: the controller's served throughput and spec acceptance); with a shared cache tier,
thrifty_shared_cache_{up,lookups_total,sync_errors_total,mirror_lag_seconds} (the
window's `shared_cache`, absent when the sidecar has no shared tier).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Gauge

from thrifty import __version__
from thrifty.wire import auth
from thrifty.wire import telemetry_pb2 as pb
from thrifty.wire import telemetry_pb2_grpc as pb_grpc
from thrifty.wire.codec import policy_from_pb, window_to_pb
from thrifty.wire.quality import GROUPS, LedgerGroup, ShadowVerdict
from thrifty.wire.stats import Histogram, ReplicaStats, SharedCacheStats, StatsWindow, TierStats
from thrifty.tasks import cancel_and_wait

log = logging.getLogger(__name__)
ERROR_OUTCOMES = frozenset({"upstream_error", "internal_error", "timeout", "shed"})
HANDSHAKE_TIMEOUT_S = 10.0
NO_TIER = "none"  # requests rejected before a tier was known: not a tier the controller has


class ControllerUnverified(Exception):
    """The peer did not prove knowledge of the telemetry token."""


@dataclass(slots=True)
class _HistSnap:
    bounds: list[float] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)  # per bound, then +Inf
    sum: float = 0.0


@dataclass(slots=True)
class _TierSnap:
    counters: dict[str, float] = field(default_factory=dict)
    ttft: _HistSnap = field(default_factory=_HistSnap)
    itl: _HistSnap = field(default_factory=_HistSnap)
    queue_depth: float = 0.0
    replicas: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class _SharedSnap:
    up: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)  # exact_hits, semantic_hits, sync_errors
    lag: _HistSnap = field(default_factory=_HistSnap)


def read_shared(registry: CollectorRegistry) -> _SharedSnap | None:
    """Cumulative shared-tier figures, or None when the registry has no shared tier."""
    snap: _SharedSnap | None = None
    for family in registry.collect():
        if not family.name.startswith("thrifty_shared_cache_"):
            continue
        snap = snap or _SharedSnap()
        for s in family.samples:
            labels, v, c = s.labels, s.value, snap.counters
            if s.name == "thrifty_shared_cache_up":
                snap.up = v
            elif s.name == "thrifty_shared_cache_lookups_total":
                key = {("exact", "hit"): "exact_hits", ("semantic", "hit_remote"): "semantic_hits"}.get(
                    (labels.get("kind", ""), labels.get("result", "")))
                if key is not None:
                    c[key] = c.get(key, 0) + v
            elif s.name == "thrifty_shared_cache_sync_errors_total":
                c["sync_errors"] = c.get("sync_errors", 0) + v
            elif s.name == "thrifty_shared_cache_mirror_lag_seconds_bucket":
                le = float(labels["le"])
                if le != float("inf"):
                    snap.lag.bounds.append(le)
                snap.lag.cumulative.append(v)
            elif s.name == "thrifty_shared_cache_mirror_lag_seconds_sum":
                snap.lag.sum = v
    return snap


def shared_between(now: _SharedSnap | None, before: _SharedSnap | None) -> SharedCacheStats | None:
    """Deltas of the shared tier's counters and lag histogram; `up` at the window's end."""
    if now is None:
        return None
    d = lambda key: int(max(0.0, now.counters.get(key, 0) - (before.counters.get(key, 0) if before else 0)))  # noqa: E731
    return SharedCacheStats(up=now.up >= 1.0, exact_hits=d("exact_hits"), semantic_hits=d("semantic_hits"),
                            sync_errors=d("sync_errors"), mirror_lag=_hist_delta(now.lag, before.lag if before else None))


_LEDGER = {"thrifty_ledger_requests_total": "requests", "thrifty_ledger_dollars_total": "dollars",
           "thrifty_ledger_dollars_squared_total": "dollars_sq", "thrifty_ledger_baseline_dollars_total": "baseline_dollars",
           "thrifty_ledger_judged_total": "judged", "thrifty_ledger_quality_total": "quality_sum"}


def read_ledger(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Cumulative savings-ledger counters per group (empty without the quality loop)."""
    out: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        if not family.name.startswith("thrifty_ledger_"):
            continue
        for s in family.samples:
            key, group = _LEDGER.get(s.name), s.labels.get("group")
            if key is not None and group in GROUPS:
                out.setdefault(group, {})[key] = s.value
    return out


def ledger_between(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> list[LedgerGroup]:
    """Deltas per group; groups with nothing new are left out."""
    out = []
    for group, values in sorted(now.items()):
        prev = before.get(group, {})
        d = {k: max(0.0, v - prev.get(k, 0.0)) for k, v in values.items()}
        if not any(d.values()):
            continue
        out.append(LedgerGroup(group, int(round(d.get("requests", 0))), d.get("dollars", 0.0), d.get("dollars_sq", 0.0),
                               d.get("baseline_dollars", 0.0), int(round(d.get("judged", 0))), d.get("quality_sum", 0.0)))
    return out


class VerdictSource(Protocol):
    """The sidecar's quality loop as telemetry sees it (proxy/quality/shadow.py)."""

    def drain(self, limit: int) -> list[ShadowVerdict]: ...

    def requeue(self, verdicts: list[ShadowVerdict]) -> None: ...


def read_registry(registry: CollectorRegistry) -> dict[str, _TierSnap]:
    """Cumulative values per tier from the sidecar's registry."""
    tiers: dict[str, _TierSnap] = {}

    def tier(name: str) -> _TierSnap:
        return tiers.setdefault(name, _TierSnap())

    for family in registry.collect():
        for s in family.samples:
            labels, v = s.labels, s.value
            t = labels.get("tier")
            if t is None or t == NO_TIER:
                continue
            name = s.name
            if name == "thrifty_requests_total":
                c = tier(t).counters
                c["requests"] = c.get("requests", 0) + v
                if labels.get("outcome") in ERROR_OUTCOMES:
                    c["errors"] = c.get("errors", 0) + v
                elif labels.get("outcome") == "client_error":
                    c["client_errors"] = c.get("client_errors", 0) + v
                if labels.get("cache") in ("exact", "semantic"):
                    key = f"hits_{labels['cache']}"
                    c[key] = c.get(key, 0) + v
            elif name == "thrifty_tokens_total":
                key = f"tokens_{labels.get('kind', '')}"
                tier(t).counters[key] = tier(t).counters.get(key, 0) + v
            elif name == "thrifty_cost_dollars_total":
                tier(t).counters["dollars"] = tier(t).counters.get("dollars", 0) + v
            elif name == "thrifty_baseline_cost_dollars_total":
                tier(t).counters["baseline"] = tier(t).counters.get("baseline", 0) + v
            elif name == "thrifty_cache_baseline_cost_dollars_total":
                tier(t).counters["cache_baseline"] = tier(t).counters.get("cache_baseline", 0) + v
            elif name == "thrifty_router_decisions_total":
                tier(t).counters["routed"] = tier(t).counters.get("routed", 0) + v
            elif name in ("thrifty_ttft_seconds_bucket", "thrifty_itl_seconds_bucket"):
                h = tier(t).ttft if name.startswith("thrifty_ttft") else tier(t).itl
                le = float(labels["le"])
                if le != float("inf"):
                    h.bounds.append(le)
                h.cumulative.append(v)
            elif name in ("thrifty_ttft_seconds_sum", "thrifty_itl_seconds_sum"):
                (tier(t).ttft if name.startswith("thrifty_ttft") else tier(t).itl).sum = v
            elif name == "thrifty_queue_depth":
                tier(t).queue_depth = v
            elif name.startswith("thrifty_replica_") and "replica" in labels:
                key = name.removeprefix("thrifty_replica_")
                tier(t).replicas.setdefault(labels["replica"], {})[key] = v
    return tiers


def _hist_delta(now: _HistSnap, before: _HistSnap | None) -> Histogram:
    if not now.cumulative or not now.bounds:
        return Histogram()
    cum = list(now.cumulative)
    s = now.sum
    if before is not None and before.bounds == now.bounds and before.cumulative:
        cum = [a - b for a, b in zip(cum, before.cumulative)]
        s -= before.sum
    counts = [max(0, round(cum[0]))] + [max(0, round(cum[i] - cum[i - 1])) for i in range(1, len(cum))]
    return Histogram(bounds=tuple(now.bounds), counts=counts, sum=max(0.0, s), count=sum(counts))


def window_between(now: dict[str, _TierSnap], before: dict[str, _TierSnap], start: float, end: float,
                   seq: int, catch_up: bool, *, shared_now: _SharedSnap | None = None,
                   shared_before: _SharedSnap | None = None) -> StatsWindow:
    """Deltas of counters/histograms; gauges at `end`."""
    tiers = []
    for name, snap in sorted(now.items()):
        prev = before.get(name)
        d = lambda key: max(0.0, snap.counters.get(key, 0) - (prev.counters.get(key, 0) if prev else 0))  # noqa: E731
        replicas = []
        for url, g in sorted(snap.replicas.items()):
            pg = prev.replicas.get(url, {}) if prev else {}
            spec = lambda key: max(0.0, g.get(key, 0) - pg.get(key, g.get(key, 0)))  # noqa: E731
            served = lambda key: spec(key) if key in g else None  # noqa: E731 - None: not scraped
            replicas.append(ReplicaStats(
                url=url, healthy=g.get("up", 1.0) >= 1.0, waiting=g.get("waiting", 0.0), running=g.get("running", 0.0),
                kv_cache_usage=g.get("kv_cache_usage", 0.0), inflight=g.get("inflight", 0.0),
                spec_draft_tokens=spec("spec_draft_tokens"), spec_accepted_tokens=spec("spec_accepted_tokens"),
                prompt_tokens=served("prompt_tokens"), generation_tokens=served("generation_tokens"),
            ))
        tiers.append(TierStats(
            tier=name, requests=int(d("requests")), errors=int(d("errors")),
            client_errors=int(d("client_errors")), input_tokens=int(d("tokens_input")),
            output_tokens=int(d("tokens_output")), cached_tokens=int(d("tokens_cached")), dollars=d("dollars"),
            baseline_dollars=d("baseline"), cache_baseline_dollars=d("cache_baseline"), ttft=_hist_delta(snap.ttft, prev.ttft if prev else None),
            itl=_hist_delta(snap.itl, prev.itl if prev else None), queue_depth=snap.queue_depth,
            cache_exact_hits=int(d("hits_exact")), cache_semantic_hits=int(d("hits_semantic")),
            routed=int(d("routed")), replicas=replicas,
        ))
    return StatsWindow(window_start=start, window_end=end, tiers=tiers, seq=seq, catch_up=catch_up,
                       shared_cache=shared_between(shared_now, shared_before))


class TelemetryClient:
    """Streams windowed stats to the controller and applies the policy it pushes."""

    def __init__(self, target: str, registry: CollectorRegistry, sidecar_id: str,
                 on_policy: Callable[[dict[str, Any]], None], *, interval_s: float = 5.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 on_connected: Callable[[bool], None] | None = None, clock: Callable[[], float] = time.time,
                 token: bytes | None, tls: auth.TlsFiles | None = None, verdicts: VerdictSource | None = None,
                 max_verdicts: int = 1000) -> None:
        """`token` None: no handshake (only with the sidecar's explicit --insecure-telemetry);
        `tls`: verify the controller's certificate (and present ours for mTLS); `verdicts`: the
        quality loop whose shadow verdicts ride in the windows (at most `max_verdicts` each)."""
        self.verdicts, self.max_verdicts = verdicts, max_verdicts
        self.target, self.registry, self.sidecar_id = target, registry, sidecar_id
        self.token = token
        self._credentials = auth.channel_credentials(tls) if tls is not None and tls.enabled else None
        self._channel_options = [("grpc.ssl_target_name_override", tls.server_name)] if tls and tls.server_name else []
        self._connected_gauge = Gauge("thrifty_controller_connected", "1 while the telemetry stream is up",
                                      registry=registry)
        self.on_policy, self.on_connected = on_policy, on_connected
        self.interval_s = interval_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.clock = clock
        self.policy: dict[str, Any] | None = None  # the last policy; kept while the controller is away
        self.connected = False
        self.windows_sent = 0
        self._sent_snap: dict[str, _TierSnap] = read_registry(registry)
        self._sent_shared: _SharedSnap | None = read_shared(registry)
        self._sent_ledger = read_ledger(registry)
        self._sent_time = clock()
        self._seq = 0
        self._gap = False
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"telemetry-{self.sidecar_id}")

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._task)
        self._task = None

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._connected_gauge.set(1 if up else 0)
            if self.on_connected is not None:
                self.on_connected(up)

    async def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                async with self._channel() as channel:
                    await self._stream(pb_grpc.TelemetryStub(channel))
                delay = self.backoff_initial_s
            except asyncio.CancelledError:
                raise
            except ControllerUnverified as exc:
                log.warning("telemetry peer at %s refused: %s", auth.printable(self.target), exc)
            except grpc.aio.AioRpcError as exc:
                log.info("telemetry stream to %s ended: %s", self.target, exc.code().name)
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect later
                log.warning("telemetry stream to %s failed: %r", self.target, exc)
            self._set_connected(False)
            self._gap = True
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=random.uniform(0.5, 1.0) * delay)
            except TimeoutError:
                pass
            delay = min(self.backoff_max_s, delay * 2)

    def _channel(self) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(self.target, self._credentials, options=self._channel_options)
        return grpc.aio.insecure_channel(self.target)

    async def _stream(self, stub: pb_grpc.TelemetryStub) -> None:
        outbox: asyncio.Queue[pb.SidecarMessage] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.SidecarMessage]:
            while True:
                yield await outbox.get()

        hello = pb.Hello(sidecar_id=self.sidecar_id, version=__version__, tiers=sorted(self._sent_snap))
        if self.token is None:
            call = stub.Stream(requests())
        else:
            nonce = auth.new_nonce()
            call = stub.Stream(requests(), metadata=((auth.NONCE_KEY, nonce),))
            try:
                md = await asyncio.wait_for(call.initial_metadata(), HANDSHAKE_TIMEOUT_S)
            except BaseException:
                call.cancel()
                raise
            theirs = auth.metadata_value(md, auth.NONCE_KEY)
            proof = auth.metadata_value(md, auth.PROOF_KEY) or ""
            if not auth.valid_nonce(theirs) or not auth.same(proof, auth.controller_proof(self.token, nonce, theirs)):
                call.cancel()
                raise ControllerUnverified("it did not prove knowledge of the telemetry token; its policy is ignored")
            hello.proof = auth.sidecar_proof(self.token, theirs, nonce, self.sidecar_id)
        outbox.put_nowait(pb.SidecarMessage(hello=hello))
        pending: dict[int, tuple[dict[str, _TierSnap], _SharedSnap | None, float]] = {}
        pending_ledger: dict[int, dict[str, dict[str, float]]] = {}
        pending_verdicts: dict[int, list[ShadowVerdict]] = {}  # sent, not acknowledged: requeued if lost

        async def produce() -> None:
            # Within one stream each window follows the previous one; after a reconnect
            # the first window starts from the last acknowledged one (the catch-up).
            base_snap, base_shared, base_time, catch_up = self._sent_snap, self._sent_shared, self._sent_time, self._gap
            base_ledger = self._sent_ledger
            while True:
                await asyncio.sleep(self.interval_s)
                now_snap, now_shared, now = read_registry(self.registry), read_shared(self.registry), self.clock()
                now_ledger = read_ledger(self.registry)
                self._seq += 1
                w = window_between(now_snap, base_snap, base_time, now, self._seq, catch_up,
                                   shared_now=now_shared, shared_before=base_shared)
                w.ledger = ledger_between(now_ledger, base_ledger)
                if self.verdicts is not None:
                    w.verdicts = self.verdicts.drain(self.max_verdicts)
                    pending_verdicts[self._seq] = w.verdicts
                pending[self._seq] = (now_snap, now_shared, now)
                pending_ledger[self._seq] = now_ledger
                base_snap, base_shared, base_time, catch_up = now_snap, now_shared, now, False
                base_ledger = now_ledger
                outbox.put_nowait(pb.SidecarMessage(window=window_to_pb(w)))

        producer: asyncio.Task[None] | None = None
        try:
            async for msg in call:
                kind = msg.WhichOneof("kind")
                if kind == "policy":
                    self._set_connected(True)
                    self.policy = policy_from_pb(msg.policy)
                    self.on_policy(dict(self.policy))
                    if producer is None:
                        producer = asyncio.create_task(produce())
                elif kind == "ack" and msg.ack.seq in pending:
                    # Acknowledged: the next window starts where this one ended.
                    self._sent_snap, self._sent_shared, self._sent_time = pending[msg.ack.seq]
                    self._sent_ledger = pending_ledger[msg.ack.seq]
                    for seq in [s for s in pending if s <= msg.ack.seq]:
                        del pending[seq]
                        pending_ledger.pop(seq, None)
                        pending_verdicts.pop(seq, None)
                    self._gap = False
                    self.windows_sent += 1
        finally:
            if producer is not None:
                producer.cancel()
            call.cancel()
            if self.verdicts is not None:  # windows never acknowledged: their verdicts go out again
                for seq in sorted(pending_verdicts, reverse=True):
                    self.verdicts.requeue(pending_verdicts[seq])
