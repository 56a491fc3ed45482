"""Exact response cache: the same tenant sending the same canonical request gets the
stored answer without touching an engine.

The key is a hash of the tenant, the endpoint, the forced tier (`X-Thrifty-Tier`, if
any) and the request body minus the fields that do not change the answer (`stream`,
`stream_options`, `user`); the body is
canonicalised (sorted keys, compact JSON) so key order and whitespace never split
entries. Only deterministic requests are cached by default (temperature 0, or a fixed
seed): replaying a sampled answer would silently remove the diversity the client asked
for. Bounded by bytes (LRU eviction) and by a TTL.

`cached_body_as_sse` turns a stored non-streaming body into the SSE chunks a streaming
client expects, so one cache serves both kinds of clients.
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


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def cached_body_as_sse(body: dict[str, Any], *, include_usage: bool = False) -> list[bytes]:
    """Render a complete `chat.completion` / `text_completion` body as SSE events.

    One role chunk, one content chunk per choice (tool calls carried whole), one finish
    chunk per choice, an optional usage chunk (when the client asked for
    `stream_options.include_usage`), then `data: [DONE]`. The sidecar writes the events
    as they come; each is a complete `data: ...\\n\\n` frame.
    """
    is_chat = body.get("object") == "chat.completion" or any("message" in c for c in body.get("choices", []))
    base = {
        "id": body.get("id", "cached"),
        "object": "chat.completion.chunk" if is_chat else "text_completion",
        "created": body.get("created", int(time.time())),
        "model": body.get("model", ""),
    }
    if body.get("system_fingerprint") is not None:
        base["system_fingerprint"] = body["system_fingerprint"]
    events: list[bytes] = []
    for choice in body.get("choices", []):
        index = choice.get("index", 0)
        if is_chat:
            message = choice.get("message") or {}
            events.append(_sse({**base, "choices": [{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""}, "logprobs": None, "finish_reason": None}]}))
            delta: dict[str, Any] = {}
            if message.get("content"):
                delta["content"] = message["content"]
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
            if delta:
                events.append(_sse({**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]}))
            events.append(_sse({**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason", "stop")}]}))
        else:
            events.append(_sse({**base, "choices": [{"index": index, "text": choice.get("text", ""), "logprobs": None, "finish_reason": None}]}))
            events.append(_sse({**base, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason", "stop")}]}))
    if include_usage and body.get("usage") is not None:
        events.append(_sse({**base, "choices": [], "usage": body["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events
