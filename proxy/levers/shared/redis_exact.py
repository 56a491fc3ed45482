"""`SharedExactCache`: the exact cache with a Redis tier behind the local LRU.

A lookup reads the local LRU first, then (on a miss) Redis under the tier's timeout and
breaker; a store writes both, the Redis write in the background. Entries are compressed
(zlib), capped in size, expire by TTL (PX) and are evicted by the server's LRU policy.
"""

from __future__ import annotations

import zlib
from typing import Any

from thrifty.proxy.levers.exact_cache import ExactCache
from thrifty.proxy.levers.shared.keys import EntryTooLarge, exact_key, pack_body, unpack_body
from thrifty.proxy.levers.shared.tier import SharedTier, SharedUnavailable


class SharedExactCache(ExactCache):
    def __init__(self, max_bytes: int, ttl_s: float, tier: SharedTier) -> None:
        super().__init__(max_bytes, ttl_s)
        self.tier = tier

    def put(self, key: str, body: dict[str, Any], *, tenant: str | None = None) -> bool:
        """Local put; with `tenant`, also shared (the tenant picks the key's hash tag)."""
        stored = super().put(key, body)
        if tenant is not None:
            self.tier.spawn("exact", self._publish(tenant, key, body))
        return stored

    async def _publish(self, tenant: str, key: str, body: dict[str, Any]) -> None:
        metrics = self.tier.metrics
        try:
            data = pack_body(body, self.tier.settings.max_entry_bytes)
        except EntryTooLarge:
            metrics.writes.labels("exact", "too_large").inc()
            return
        name = exact_key(self.tier.prefix, tenant, key)
        ttl_ms = int(self.ttl_s * 1000)
        try:
            await self.tier.call("write", lambda r: r.set(name, data, px=ttl_ms))
        except SharedUnavailable:
            metrics.writes.labels("exact", "error").inc()
            return
        metrics.writes.labels("exact", "ok").inc()

    async def fetch(self, tenant: str, key: str) -> dict[str, Any] | None:
        """The shared entry for a local miss (None: absent, or Redis unavailable)."""
        name = exact_key(self.tier.prefix, tenant, key)
        try:
            data = await self.tier.call("read", lambda r: r.get(name))
        except SharedUnavailable:
            self.tier.metrics.lookups.labels("exact", "unavailable").inc()
            return None
        if data is None:
            self.tier.metrics.lookups.labels("exact", "miss").inc()
            return None
        try:
            body = unpack_body(data)
        except (ValueError, zlib.error):
            self.tier.metrics.lookups.labels("exact", "error").inc()
            return None
        self.tier.metrics.lookups.labels("exact", "hit").inc()
        return body
