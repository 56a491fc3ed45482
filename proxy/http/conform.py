"""Make every answer the client sees conform to the OpenAI schema, touching only what the sidecar changed.

Policies (README "OpenAI surface"):
- `model` in every answer is the name the client sent (its alias), whichever tier or
  cache answered; the answering tier is in `X-Thrifty-Tier`.
- a cache hit gets a fresh `id` and `created` (it is a new completion to the client),
  and its `usage` omits null detail objects (the schema has them as objects or absent).
- a stream for which the sidecar asked the engine for usage (for accounting) reaches
  the client as the engine would have sent it without that: the usage-only chunk and
  any `"usage":null` are removed, and the `system_fingerprint` vLLM moves onto the usage
  chunk goes back onto the finish chunks. Every other byte is the engine's.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

_MODEL_RE = re.compile(rb'"model":\s*"(?:[^"\\]|\\.)*"')
_FINISHED_RE = re.compile(rb'"finish_reason":\s*"')
_USAGE_RE = re.compile(rb'"usage":\s*\{')
_NULL_USAGE = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')
ORIGIN_KEY = "thrifty_tier"  # stored with a cached answer: the tier that produced it (never sent to clients)
_ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_"}


def model_field(alias: str) -> bytes:
    return b'"model":' + json.dumps(alias, ensure_ascii=False).encode()


def rewrite_model(data: bytes, alias: str) -> bytes:
    """`data` (one JSON answer or SSE event) with its top-level `model` set to `alias`.

    The first `"model":"..."` in an OpenAI answer is the top-level one (it precedes
    `choices`/`data`; inside strings quotes are escaped, so they cannot match)."""
    m = _MODEL_RE.search(data)
    if m is None:
        return data
    new = model_field(alias)
    if m.group(0) == new:
        return data
    return data[: m.start()] + new + data[m.end() :]


def fresh_id(endpoint: str) -> str:
    return _ID_PREFIX.get(endpoint, "cmpl-") + uuid.uuid4().hex


def clean_usage(usage: Any) -> Any:
    """Usage without null detail objects (`prompt_tokens_details: null` violates the schema)."""
    if not isinstance(usage, dict):
        return usage
    return {k: v for k, v in usage.items() if v is not None}


def cached_answer(body: dict[str, Any], endpoint: str, alias: str) -> dict[str, Any]:
    """A stored answer as a new completion: fresh id and created, the client's model name, clean usage."""
    out = {k: v for k, v in body.items() if k != ORIGIN_KEY}
    out["model"] = alias
    if endpoint != "embeddings":
        out["id"] = fresh_id(endpoint)
        out["created"] = int(time.time())
    if "usage" in out:
        out["usage"] = clean_usage(out["usage"])
    return out


class StreamEditor:
    """Edits a relayed SSE stream event by event (see the module docstring); also picks out usage.

    `strip_added_usage`: the sidecar added `include_usage` to the engine's request."""

    def __init__(self, alias: str, *, strip_added_usage: bool) -> None:
        self.model = model_field(alias)
        self.strip = strip_added_usage
        self.upstream_model: bytes | None = None  # the engine's `"model":"..."`, learned from its first event
        self.held: list[bytes] = []  # finish chunks waiting for the fingerprint on the usage chunk
        self.usage: dict[str, object] | None = None

    def passes_through(self, events: bytes) -> bool:
        """True when `events` go to the client unchanged (the common case, no parsing)."""
        return (not self.strip and self.upstream_model is not None and self.upstream_model == self.model
                and b'"usage"' not in events)

    def feed(self, events: bytes) -> bytes:
        """Whole events (each ending in a blank line) in, what the client gets out."""
        if self.passes_through(events):
            return events
        out: list[bytes] = []
        for event in events.split(b"\n\n"):
            if event:
                out.extend(self._event(event))
        return b"".join(out)

    def flush(self) -> bytes:
        """Held finish chunks, as they were (the stream ended without a usage chunk)."""
        held, self.held = self.held, []
        return b"".join(held)

    def _event(self, event: bytes) -> list[bytes]:
        if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
            return [self.flush(), event + b"\n\n"]
        event = self._rewrite_model(event)
        if b'"usage"' in event and _USAGE_RE.search(event):
            try:
                chunk = json.loads(event[6:])
            except ValueError:
                chunk = None
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
                if self.strip and not chunk.get("choices"):  # the usage chunk the sidecar asked for
                    fingerprint = chunk.get("system_fingerprint")
                    held, self.held = self.held, []
                    if isinstance(fingerprint, str):
                        held = [_stamp_fingerprint(e, fingerprint) for e in held]
                    return held
        if self.strip:
            for null in _NULL_USAGE:
                if null in event:
                    event = event.replace(null, b"")
            if _FINISHED_RE.search(event) and b'"system_fingerprint"' not in event:
                self.held.append(event + b"\n\n")
                return []
        return [event + b"\n\n"]

    def _rewrite_model(self, event: bytes) -> bytes:
        if self.upstream_model is None:
            m = _MODEL_RE.search(event)
            if m is None:
                return event
            self.upstream_model = m.group(0)
        if self.upstream_model == self.model:
            return event
        return event.replace(self.upstream_model, self.model, 1)


class ResponsesStreamEditor:
    """The Responses API's stream (`event: TYPE` + `data: {...}` events): the client's model name
    on the response objects, and the two things the sidecar needs from it: the response id
    (from `response.created`, to keep a conversation on its replica) and the usage (from
    `response.completed`). Every other byte is the engine's."""

    held: list[bytes] = []  # nothing is ever held (no usage chunk to strip)

    def __init__(self, alias: str) -> None:
        self.model = model_field(alias)
        self.usage: dict[str, object] | None = None
        self.response_id: str | None = None

    def feed(self, events: bytes) -> bytes:
        if self.response_id is None or b'"response.completed"' in events or b'"model"' in events:
            events = b"".join(self._event(e) for e in events.split(b"\n\n") if e)
        return events

    def flush(self) -> bytes:
        return b""

    def _event(self, event: bytes) -> bytes:
        if b'"model"' in event:
            m = _MODEL_RE.search(event)
            if m is not None and m.group(0) != self.model:
                event = event[: m.start()] + self.model + event[m.end() :]
        if self.response_id is None or b'"response.completed"' in event:
            data = event[event.find(b"data: ") + 6 :] if b"data: " in event else b""
            try:
                payload = json.loads(data) if data else None
            except ValueError:
                payload = None
            response = payload.get("response") if isinstance(payload, dict) else None
            if isinstance(response, dict):
                if self.response_id is None and isinstance(response.get("id"), str):
                    self.response_id = response["id"]
                if payload.get("type") == "response.completed" and isinstance(response.get("usage"), dict):  # type: ignore[union-attr]
                    self.usage = response["usage"]
        return event + b"\n\n"


def _stamp_fingerprint(event: bytes, fingerprint: str) -> bytes:
    """vLLM's finish chunk as it sends it without include_usage: the fingerprint as the last field."""
    body = event.rstrip()
    if not body.endswith(b"}"):
        return event
    return body[:-1] + b',"system_fingerprint":' + json.dumps(fingerprint).encode() + b"}\n\n"
