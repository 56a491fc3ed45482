"""Replay a complete (cached) OpenAI answer as the SSE chunks a streaming client expects.

The chunks are what vLLM sends for the same answer, condensed: per choice a role +
content chunk (with its logprobs and tool calls) and a finish chunk (`finish_reason`,
and `stop_reason` when the answer has one); `system_fingerprint` on the finish chunks,
or on the trailing usage chunk when the client asked for usage (where vLLM puts it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from thrifty.proxy.http.conform import clean_usage


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _finish(choice: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"finish_reason": choice.get("finish_reason") or "stop"}
    if "stop_reason" in choice:
        out["stop_reason"] = choice["stop_reason"]
    return out


def answer_as_sse(body: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """Chat answers become role + content + finish chunks per choice; completions one text chunk each."""
    is_chat = body.get("object") == "chat.completion" or any("message" in c for c in body.get("choices", []))
    obj = "chat.completion.chunk" if is_chat else "text_completion"
    base = {"id": body.get("id", "cached"), "object": obj, "created": body.get("created", 0), "model": body.get("model", "")}
    fingerprint = body.get("system_fingerprint")
    last = dict(base)
    if isinstance(fingerprint, str) and not include_usage:
        last["system_fingerprint"] = fingerprint
    for choice in body.get("choices", []):
        index = choice.get("index", 0)
        if is_chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            for key in ("refusal", "reasoning_content"):
                if message.get(key):
                    delta[key] = message[key]
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(message["tool_calls"])]
            yield _event({**base, "choices": [{"index": index, "delta": delta, "logprobs": choice.get("logprobs"),
                                               "finish_reason": None}]})
            yield _event({**last, "choices": [{"index": index, "delta": {}, "logprobs": None, **_finish(choice)}]})
        else:
            yield _event({**last, "choices": [{"index": index, "text": choice.get("text", ""),
                                               "logprobs": choice.get("logprobs"), **_finish(choice)}]})
    if include_usage and isinstance(body.get("usage"), dict):
        tail = {**base, "choices": [], "usage": clean_usage(body["usage"])}
        if isinstance(fingerprint, str):
            tail["system_fingerprint"] = fingerprint
        yield _event(tail)
    yield b"data: [DONE]\n\n"
