"""Replay a complete (cached) OpenAI answer as the SSE chunks a streaming client expects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def answer_as_sse(body: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """Chat answers become role + content + finish chunks per choice; completions one text chunk each."""
    is_chat = body.get("object") == "chat.completion" or any("message" in c for c in body.get("choices", []))
    base = {"id": body.get("id", "cached"), "created": body.get("created", 0), "model": body.get("model", "")}
    for choice in body.get("choices", []):
        index = choice.get("index", 0)
        if is_chat:
            message = choice.get("message") or {}
            delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(message["tool_calls"])]
            yield _event({**base, "object": "chat.completion.chunk",
                          "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]})
            yield _event({**base, "object": "chat.completion.chunk",
                          "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason", "stop")}]})
        else:
            yield _event({**base, "object": "text_completion",
                          "choices": [{"index": index, "text": choice.get("text", ""), "logprobs": None,
                                       "finish_reason": choice.get("finish_reason", "stop")}]})
    if include_usage and isinstance(body.get("usage"), dict):
        obj = "chat.completion.chunk" if is_chat else "text_completion"
        yield _event({**base, "object": obj, "choices": [], "usage": body["usage"]})
    yield b"data: [DONE]\n\n"
