"""vLLM's KV-cache events: the wire format, one replica's feed, and its ZeroMQ subscriber.

vLLM (`--kv-events-config`, publisher `zmq`) sends multipart `[topic, seq, payload]`:
`seq` an 8-byte big-endian counter per publisher (restarts at 0 with the engine), and
`payload` msgpack `[ts, [events], dp_rank?]` where each event is `BlockStored`,
`BlockRemoved` or `AllBlocksCleared` (a tagged map since vLLM 0.11; older engines send
tagged arrays, decoded too). A replay endpoint (ROUTER) resends buffered batches from a
sequence number. `ReplicaKvFeed` turns that stream into a `ReplicaKvIndex` that repairs
itself: a gap replays or resets, a restarted publisher resets, `AllBlocksCleared` resets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import msgspec

from thrifty.proxy.balance.kv_index import ROOT_KEY, ReplicaKvIndex
from thrifty.tasks import cancel_and_wait

log = logging.getLogger("thrifty.kv_events")

END_SEQ = -1  # the replay endpoint's end-of-stream marker (signed 8 bytes)
REPLAY_TIMEOUT_S = 1.0
RESET_REASONS = ("cleared", "gap", "restart", "down", "removed")

_decoder = msgspec.msgpack.Decoder()


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: list[Hashable]
    parent_block_hash: Hashable | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None
    extra_keys: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[Hashable]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KvEventError(ValueError):
    """A payload that is not a vLLM KV event batch."""


def _hashable(h: Any) -> Hashable:
    return tuple(h) if isinstance(h, list) else h


def _event(raw: Any) -> KvEvent | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
        fields = raw
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        kind = raw[0]  # array_like form: [tag, field0, field1, ...] in declaration order
        names = {"BlockStored": ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
                                 "lora_name", "extra_keys"),
                 "BlockRemoved": ("block_hashes", "medium")}.get(kind, ())
        fields = dict(zip(names, raw[1:]))
    else:
        raise KvEventError(f"event is a {type(raw).__name__}, not a map or tagged array")
    if kind == "BlockStored":
        parent = fields.get("parent_block_hash")
        return BlockStored([_hashable(h) for h in fields["block_hashes"]], None if parent is None else _hashable(parent),
                           list(fields["token_ids"]), int(fields["block_size"]), fields.get("lora_name"),
                           fields.get("extra_keys"))
    if kind == "BlockRemoved":
        return BlockRemoved([_hashable(h) for h in fields["block_hashes"]])
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return None  # an event kind this version does not know: ignored


def decode_batch(payload: bytes) -> tuple[float, list[KvEvent]]:
    """`payload` -> (engine timestamp, events). Raises KvEventError on anything else."""
    try:
        raw = _decoder.decode(payload)
        ts, events = float(raw[0]), raw[1]
        out = [e for e in map(_event, events) if e is not None]
    except (msgspec.DecodeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise KvEventError(f"not a KV event batch: {exc}") from None
    return ts, out


def encode_seq(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def decode_seq(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


@dataclass(slots=True)
class FeedStats:
    batches: int = 0
    events: int = 0
    bad: int = 0  # undecodable payloads (skipped)
    resets: dict[str, int] | None = None
    last_lag_s: float = 0.0

    def __post_init__(self) -> None:
        if self.resets is None:
            self.resets = dict.fromkeys(RESET_REASONS, 0)


class ReplicaKvFeed:
    """One replica's event stream applied to its index, in order, with gap and restart checks.

    `receive(seq, payload)` returns the first missing sequence number when it found a gap
    it cannot close alone (the caller may replay from there, then call `gap_unfilled` if
    that fails), else None. `on_lag(seconds)` sees each batch's delay from the engine.
    """

    def __init__(self, index: ReplicaKvIndex | None = None, *, on_lag: Callable[[float], None] | None = None,
                 on_reset: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.index = index or ReplicaKvIndex()
        self.on_lag = on_lag
        self.on_reset = on_reset
        self.clock = clock
        self.last_seq: int | None = None
        self.live = False  # True once the replica has published anything: the index is its truth
        self.stats = FeedStats()

    def reset(self, reason: str) -> None:
        """Forget everything the replica held (its cache is gone or unknown)."""
        self.index.clear()
        assert self.stats.resets is not None
        self.stats.resets[reason] = self.stats.resets.get(reason, 0) + 1
        if self.on_reset:
            self.on_reset(reason)

    def forget(self, reason: str = "down") -> None:
        """The replica went down or restarts: drop its index and expect a new sequence."""
        self.reset(reason)
        self.last_seq = None

    def receive(self, seq: int, payload: bytes) -> int | None:
        """Apply one batch; returns the first missing seq (not applied) when a gap opens before it."""
        last = self.last_seq
        if last is not None and seq <= last:
            self.reset("restart")  # a new publisher counts from 0 again
            last = None
        if last is not None and seq > last + 1:
            return last + 1
        self._apply(seq, payload)
        return None

    def gap_unfilled(self, seq: int, payload: bytes) -> None:
        """The replay could not close the gap before `seq`: reset, then apply `seq`."""
        self.reset("gap")
        self._apply(seq, payload)

    def _apply(self, seq: int, payload: bytes) -> None:
        self.last_seq = seq
        try:
            ts, events = decode_batch(payload)
        except KvEventError as exc:
            self.stats.bad += 1
            log.warning("skipping a KV event batch", extra={"fields": {"error": str(exc)}})
            return
        self.live = True
        self.stats.batches += 1
        self.stats.events += len(events)
        lag = max(0.0, self.clock() - ts)
        self.stats.last_lag_s = lag
        if self.on_lag:
            self.on_lag(lag)
        self.apply_events(events)

    def apply_events(self, events: list[KvEvent]) -> None:
        index = self.index
        for ev in events:
            if isinstance(ev, BlockStored):
                root = ROOT_KEY if ev.lora_name is None else hash(("lora", ev.lora_name))
                index.stored(ev.block_hashes, ev.parent_block_hash, ev.token_ids, ev.block_size, ev.extra_keys, root)
            elif isinstance(ev, BlockRemoved):
                index.removed(ev.block_hashes)
            else:
                self.reset("cleared")


class KvEventSubscriber:
    """Subscribes to one replica's publisher and keeps its `ReplicaKvFeed` current (asyncio).

    A gap is closed from `replay_endpoint` when one is given (vLLM resends its buffered
    batches from a sequence number), else the index resets. The ZeroMQ socket reconnects
    by itself, so an engine that restarts is picked up again (its seq restarts: reset).
    """

    def __init__(self, endpoint: str, feed: ReplicaKvFeed, *, topic: str = "", replay_endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.feed = feed
        self.topic = topic
        self.replay_endpoint = replay_endpoint
        self._task: asyncio.Task[None] | None = None
        self._ctx: Any = None

    def start(self) -> None:
        import zmq.asyncio

        self._ctx = zmq.asyncio.Context()
        self._task = asyncio.create_task(self._run(), name=f"thrifty-kv-events {self.endpoint}")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)

    async def _run(self) -> None:
        import zmq

        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        sub.connect(self.endpoint)
        try:
            while True:
                frames = await sub.recv_multipart()
                if len(frames) != 3:
                    self.feed.stats.bad += 1
                    continue
                seq = decode_seq(frames[1])
                missing = self.feed.receive(seq, frames[2])
                if missing is not None:
                    if await self._replay(missing, seq):
                        self.feed.receive(seq, frames[2])
                    else:
                        self.feed.gap_unfilled(seq, frames[2])
        finally:
            sub.close(linger=0)

    async def _replay(self, start: int, upto: int) -> bool:
        """Apply batches start..upto-1 from the replay endpoint; False when it cannot."""
        if not self.replay_endpoint:
            return False
        import zmq

        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.replay_endpoint)
        try:
            await sock.send_multipart([b"", start.to_bytes(8, "big")])
            expected = start
            while True:
                if not await sock.poll(REPLAY_TIMEOUT_S * 1000):
                    return expected >= upto
                frames = await sock.recv_multipart()
                if len(frames) != 4:
                    continue
                seq = decode_seq(frames[2])
                if seq == END_SEQ:
                    return expected >= upto
                if seq < expected or seq >= upto:
                    continue
                if seq != expected:
                    return False  # the buffer no longer holds the missing batches
                self.feed.receive(seq, frames[3])
                expected = seq + 1
        finally:
            sock.close(linger=0)
