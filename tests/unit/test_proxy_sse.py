"""Replaying a cached (complete) answer to a streaming client as SSE chunks."""

from __future__ import annotations

import json
from collections.abc import Iterable

from thrifty.proxy.http.sse import answer_as_sse


def _events(chunks: Iterable[bytes]) -> list[dict | str]:
    out: list[dict | str] = []
    for chunk in chunks:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
        payload = chunk[6:-2].decode()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_body_replays_as_sse() -> None:
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    events = _events(answer_as_sse(body, include_usage=True))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-1]["usage"]["total_tokens"] == 5 and chunks[-1]["choices"] == []
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None, "stop"]
    no_usage = _events(answer_as_sse(body, include_usage=False))
    assert not any(isinstance(e, dict) and "usage" in e for e in no_usage)


def test_tool_calls_replay_with_their_index() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call, call]}, "finish_reason": "tool_calls"}]}
    chunks = [e for e in _events(answer_as_sse(body, include_usage=True)) if isinstance(e, dict)]
    delta = chunks[0]["choices"][0]["delta"]
    assert delta["content"] == "" and [c["index"] for c in delta["tool_calls"]] == [0, 1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("usage" in c for c in chunks)  # the body had none to replay


def test_completion_body_replays_as_sse() -> None:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": "abc", "finish_reason": "length"}, {"index": 1, "text": "de", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}}
    events = _events(answer_as_sse(body, include_usage=True))
    chunks = [e for e in events if isinstance(e, dict)]
    assert all(c["object"] == "text_completion" for c in chunks) and events[-1] == "[DONE]"
    assert [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks[:2]] == [
        (0, "abc", "length"), (1, "de", "stop")]
    assert chunks[2]["usage"]["completion_tokens"] == 5
