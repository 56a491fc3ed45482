"""`SharedSemanticCache`: the semantic cache as a local mirror of entries held in Redis.

Lookups stay local (the inherited `SemanticCache.lookup`: ANN index + verifier, sub-ms).
A put inserts locally, then in the background writes the entry to Redis (key with TTL)
and appends it to one Redis Stream. Every sidecar runs a consumer that reads the stream
(blocking XREAD) and applies other pods' puts and deletes to its mirror, so an insert on
any pod becomes visible on all within milliseconds. On start, and after every lost
connection, the consumer notes the stream's last id, then rebuilds the mirror from the
entry keys (SCAN + one MGET per hash tag, bulk index insert; answers stay compressed
until a hit) and resumes the stream from that id: nothing inserted meanwhile is missed,
and applying an entry twice is a no-op (entry ids are a hash of partition + question). Expiry travels with the entry (wall-clock ms).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from thrifty.proxy.levers.semantic_cache import SemanticCache, SemanticHit
from thrifty.proxy.levers.shared.keys import (EntryTooLarge, SemanticEntry, pack_entry, semantic_key, semantic_match,
                                              stream_key, unpack_body, unpack_entry_lazy)
from thrifty.proxy.levers.shared.tier import REDIS_ERRORS, SharedTier, SharedUnavailable

log = logging.getLogger(__name__)
_SCAN_BATCH = 5000
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
_CLOSE_TRIES, _CLOSE_WAIT_S = 5, 1.0  # aclose: cancel, wait up to 1 s, repeat


class SharedSemanticCache(SemanticCache):
    def __init__(self, dim: int, *, tier: SharedTier, **kwargs: Any) -> None:
        super().__init__(dim, **kwargs)
        self.tier = tier
        self._stream = stream_key(tier.prefix)
        self._ids: dict[str, int] = {}  # entry id (Redis key) -> local key
        self._remote: set[int] = set()  # local keys of entries that came from Redis
        self._last_id: bytes = b"0-0"
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.synced = asyncio.Event()  # set after each completed rebuild
        self.on_apply: Callable[[str], None] | None = None  # called with each applied entry id (benches)

    # ---------------------------------------------------------------- request path

    def lookup(self, partition: str, text: str, vector: np.ndarray) -> SemanticHit | None:
        hit = super().lookup(partition, text, vector)
        if hit is not None and isinstance(hit.body, bytes):  # another pod's answer, still compressed
            try:
                hit.body = unpack_body(hit.body)
            except (ValueError, zlib.error):
                self.tier.metrics.sync_errors.labels("decode").inc()
                self.remove(hit.key)
                return None
        if hit is not None:
            self.tier.metrics.lookups.labels("semantic", "hit_remote" if hit.key in self._remote else "hit_local").inc()
        return hit

    def put(self, partition: str, text: str, vector: np.ndarray, body: dict[str, Any]) -> bool:
        entry_id = semantic_key(self.tier.prefix, partition, text)
        if self._ids.get(entry_id, -1) in self:
            return True
        key = self.insert(partition, text, vector, body)
        if key is None:
            return False
        self._ids[entry_id] = key
        entry = SemanticEntry(partition, text, vector, body, int(time.time() * 1000 + self.ttl_s * 1000))
        self.tier.spawn("semantic", self._publish(entry_id, entry))
        return True

    def forget(self, partition: str, text: str) -> None:
        """Remove an entry here, in Redis and (through the stream) on every mirror."""
        entry_id = semantic_key(self.tier.prefix, partition, text)
        key = self._ids.pop(entry_id, None)
        if key is not None:
            self.remove(key)
        self.tier.spawn("semantic", self._publish_delete(entry_id))

    async def _publish(self, entry_id: str, entry: SemanticEntry) -> None:
        settings, metrics = self.tier.settings, self.tier.metrics
        try:
            blob = pack_entry(entry, settings.max_entry_bytes)
        except EntryTooLarge:
            metrics.writes.labels("semantic", "too_large").inc()
            return
        ttl_ms = int(self.ttl_s * 1000)

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(entry_id, blob, px=ttl_ms)
                pipe.xadd(self._stream, {b"op": b"put", b"k": entry_id.encode(), b"e": blob},
                          maxlen=settings.stream_maxlen, approximate=True)
                await pipe.execute()

        try:
            await self.tier.call("write", write)
        except SharedUnavailable:
            metrics.writes.labels("semantic", "error").inc()
            return
        metrics.writes.labels("semantic", "ok").inc()

    async def _publish_delete(self, entry_id: str) -> None:
        async def write(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.delete(entry_id)
                pipe.xadd(self._stream, {b"op": b"del", b"k": entry_id.encode()},
                          maxlen=self.tier.settings.stream_maxlen, approximate=True)
                await pipe.execute()

        try:
            await self.tier.call("write", write)
        except SharedUnavailable:
            self.tier.metrics.writes.labels("semantic", "error").inc()
            return
        self.tier.metrics.writes.labels("semantic", "ok").inc()

    # ---------------------------------------------------------------- mirror

    def ensure_started(self) -> None:
        """Start the stream consumer (idempotent; needs a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shared-cache-mirror")

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                await self.rebuild()
                failures = 0
                while not self._closing:
                    reply = await self.tier.stream_client.xread({self._stream: self._last_id}, count=1000,
                                                                 block=self.tier.settings.block_ms)
                    for _stream, messages in reply or []:
                        self._apply(messages)
                    self.tier.breaker.success()
                    self.tier.metrics.up.set(1)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self._closing:
                    return  # a cancellation the client library turned into a timeout
                self.synced.clear()
                self.tier.failed("stream")
                delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                failures += 1
                log.warning("shared cache stream lost (%r); local only, retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                self.synced.clear()
                self.tier.metrics.sync_errors.labels("apply").inc()
                log.exception("shared cache mirror failed; rebuilding")
                await asyncio.sleep(1.0)

    async def rebuild(self) -> int:
        """Load every live entry from Redis that this mirror lacks; returns how many."""
        started = time.perf_counter()
        r = self.tier.stream_client
        last = await r.xrevrange(self._stream, count=1)
        self._last_id = last[0][0] if last else b"0-0"
        loaded = 0
        batch: list[bytes] = []
        async for name in r.scan_iter(match=semantic_match(self.tier.prefix), count=_SCAN_BATCH):
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                loaded += await self._load(r, batch)
                batch = []
        if batch:
            loaded += await self._load(r, batch)
        self._prune_ids()
        self.tier.metrics.rebuild_seconds.set(time.perf_counter() - started)
        self.synced.set()
        return loaded

    async def _load(self, r: Any, names: list[bytes]) -> int:
        wanted = [n for n in names if self._ids.get(n.decode(), -1) not in self]
        if not wanted:
            return 0
        groups: dict[bytes, list[bytes]] = {}  # by hash tag: one slot, so one MGET is Cluster-safe
        for name in wanted:
            groups.setdefault(name[name.index(b"{"):name.index(b"}") + 1], []).append(name)
        async with r.pipeline(transaction=False) as pipe:
            for names in groups.values():
                pipe.mget(names)
            replies = await pipe.execute()
        entries = []
        for names, blobs in zip(groups.values(), replies, strict=True):
            entries += [(name.decode(), blob) for name, blob in zip(names, blobs, strict=True) if blob is not None]
        return self._insert_remote(entries)

    def _apply(self, messages: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        now = time.time()
        puts: list[tuple[str, bytes]] = []
        for message_id, fields in messages:
            self._last_id = message_id
            entry_id = fields.get(b"k", b"").decode()
            op = fields.get(b"op")
            if op == b"put" and b"e" in fields:
                self.tier.metrics.mirror_lag.observe(max(0.0, now - int(message_id.split(b"-")[0]) / 1000))
                puts.append((entry_id, fields[b"e"]))
            elif op == b"del":
                key = self._ids.pop(entry_id, None)
                if key is not None:
                    self.remove(key)
                    self._remote.discard(key)
        self._insert_remote(puts)

    def _insert_remote(self, entries: list[tuple[str, bytes]]) -> int:
        now_ms = time.time() * 1000
        items, ids = [], []
        for entry_id, blob in entries:
            if self._ids.get(entry_id, -1) in self:
                continue  # ours, or already mirrored
            try:
                entry = unpack_entry_lazy(blob)  # the answer is inflated only if a lookup hits it
            except (ValueError, zlib.error):
                self.tier.metrics.sync_errors.labels("decode").inc()
                continue
            ttl_s = (entry.expires_ms - now_ms) / 1000
            if ttl_s <= 0 or entry.vector.shape[0] != self.dim:
                continue
            items.append((entry.partition, entry.text, entry.vector, entry.body_zlib, ttl_s))
            ids.append(entry_id)
        keys = self.insert_many(items) if items else []
        for entry_id, key in zip(ids, keys, strict=True):
            if key is not None:
                self._ids[entry_id] = key
                self._remote.add(key)
                if self.on_apply is not None:
                    self.on_apply(entry_id)
        if len(self._ids) > 2 * len(self) + 4096:
            self._prune_ids()
        return len(items)

    def _prune_ids(self) -> None:
        """Forget ids of entries the local LRU or TTL has dropped."""
        self._ids = {k: v for k, v in self._ids.items() if v in self}
        self._remote = {k for k in self._remote if k in self}

    def clear(self) -> None:
        super().clear()
        self._ids.clear()
        self._remote.clear()

    async def aclose(self) -> None:
        """Stop the consumer. Bounded: a cancellation that lands inside the Redis client's
        own read timeout can come back as a timeout error, so the loop also checks
        `_closing`, and the wait is cut short rather than hang a shutdown."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            return
        for _ in range(_CLOSE_TRIES):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=_CLOSE_WAIT_S)
            if done:
                break
        else:
            log.warning("shared cache mirror did not stop within %.0f s; leaving it", _CLOSE_TRIES * _CLOSE_WAIT_S)
            return
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), REDIS_ERRORS):
            log.warning("shared cache mirror ended with %r", task.exception())
