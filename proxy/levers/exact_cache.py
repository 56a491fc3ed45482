"""Exact response cache: the same tenant sending the same canonical request gets the
stored answer without touching an engine.

The key is a hash of the tenant, the endpoint, the forced tier (`X-Thrifty-Tier`, if
any) and the request body minus the fields that do not change the answer (`stream`,
`stream_options`, `user`); the body is
canonicalised (sorted keys, compact JSON) so key order and whitespace never split
entries. Only deterministic requests are cached by default (temperature 0, or a fixed
seed): replaying a sampled answer would silently remove the diversity the client asked
for. Bounded by bytes (LRU eviction) and by a TTL. A hit is replayed to streaming
clients by `thrifty.proxy.http.sse.answer_as_sse`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Fields that never change what the model answers.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user"})


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(tenant: str, endpoint: str, body: dict[str, Any], forced_tier: str = "") -> str:
    """Hash of tenant + endpoint + canonical body (model alias, messages, tools, params),
    and the tier `X-Thrifty-Tier` forced, if any: a forced answer never serves a plain request."""
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    parts: dict[str, Any] = {"tenant": tenant, "endpoint": endpoint, "body": kept}
    if forced_tier:
        parts["forced_tier"] = forced_tier
    material = canonical_json(parts)
    return hashlib.sha256(material.encode()).hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    """True when the engine should give the same answer again: temperature 0 or a seed."""
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature", 1.0)  # the OpenAI default samples
    return isinstance(temperature, (int, float)) and float(temperature) == 0.0


@dataclass(slots=True)
class _Entry:
    body: dict[str, Any]
    size: int
    expires_at: float


class ExactCache:
    """LRU by bytes with a TTL; not thread-safe (used from the event loop only)."""

    def __init__(self, max_bytes: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.body

    def put(self, key: str, body: dict[str, Any]) -> bool:
        """Store `body`; False when it alone is larger than the whole budget."""
        size = len(key) + len(canonical_json(body).encode())
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(body=body, size=size, expires_at=self._clock() + self.ttl_s)
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
