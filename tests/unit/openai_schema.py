"""Explicit checks of answers against the OpenAI API schema (openai/openai-openapi), no network.

What is checked, per object (required fields, their types, enum values, nullability):
- `CreateChatCompletionResponse`: id, object "chat.completion", created, model, choices
  [index, message {role "assistant", content str|null, tool_calls [{id, type "function",
  function {name, arguments str}}]}, finish_reason enum, logprobs object|null], usage
- `CreateChatCompletionStreamResponse` (chunk): id, object "chat.completion.chunk",
  created, model, choices [index, delta object, finish_reason enum|null], usage only as
  an object on the trailing chunk (never `null` unless asked for), system_fingerprint str
- `CreateCompletionResponse` (and its stream chunks): object "text_completion", choices
  [index, text str, finish_reason enum|null, logprobs object|null]
- `CompletionUsage`: prompt/completion/total_tokens ints; `prompt_tokens_details` and
  `completion_tokens_details` objects when present (not null)
- `Model`: id, object "model", created, owned_by; `ListModelsResponse`
- `CreateEmbeddingResponse`: object "list", data [{index, object "embedding", embedding}], model, usage
- `Response` (Responses API): id, object "response", created_at, model, status enum, output array
- `ErrorResponse`: error {message str, type str, param str|null, code str|int|null}
Not checked: vLLM's extra fields (allowed: the schema does not forbid them), logprob entries' inner shapes.
"""

from __future__ import annotations

from typing import Any

FINISH = {"stop", "length", "tool_calls", "content_filter", "function_call"}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def check_usage(u: Any) -> None:
    assert isinstance(u, dict), u
    for k in ("prompt_tokens", "total_tokens"):
        assert _int(u[k]), (k, u)
    if "completion_tokens" in u:
        assert _int(u["completion_tokens"]), u
    for k in ("prompt_tokens_details", "completion_tokens_details"):
        if k in u:
            assert isinstance(u[k], dict), (k, u)


def _base(obj: Any, kind: str, model: str | None) -> None:
    assert isinstance(obj, dict), obj
    assert isinstance(obj["id"], str) and obj["id"], obj
    assert obj["object"] == kind, obj
    assert _int(obj["created"]), obj
    assert isinstance(obj["model"], str), obj
    if model is not None:
        assert obj["model"] == model, (obj["model"], model)
    assert isinstance(obj["choices"], list), obj
    if "system_fingerprint" in obj:
        assert _str_or_none(obj["system_fingerprint"]), obj


def check_chat_completion(obj: Any, model: str | None = None) -> None:
    _base(obj, "chat.completion", model)
    assert obj["choices"], obj
    for c in obj["choices"]:
        assert _int(c["index"]) and c["finish_reason"] in FINISH, c
        assert c.get("logprobs") is None or isinstance(c["logprobs"], dict), c
        m = c["message"]
        assert m["role"] == "assistant" and _str_or_none(m.get("content")), m
        for tc in m.get("tool_calls") or []:
            assert isinstance(tc["id"], str) and tc["type"] == "function", tc
            assert isinstance(tc["function"]["name"], str) and isinstance(tc["function"]["arguments"], str), tc
    check_usage(obj["usage"])


def check_completion(obj: Any, model: str | None = None) -> None:
    _base(obj, "text_completion", model)
    for c in obj["choices"]:
        assert _int(c["index"]) and isinstance(c["text"], str) and c["finish_reason"] in FINISH, c
        assert c.get("logprobs") is None or isinstance(c["logprobs"], dict), c
    check_usage(obj["usage"])


def check_chunk(obj: Any, *, chat: bool, model: str | None = None, usage_allowed: bool = False) -> None:
    _base(obj, "chat.completion.chunk" if chat else "text_completion", model)
    if "usage" in obj:
        assert usage_allowed, f"usage in a chunk the client did not ask usage for: {obj}"
        if obj["usage"] is not None:
            check_usage(obj["usage"])
    for c in obj["choices"]:
        assert _int(c["index"]), c
        assert c.get("finish_reason") is None or c["finish_reason"] in FINISH, c
        if chat:
            assert isinstance(c["delta"], dict), c
            assert _str_or_none(c["delta"].get("content")), c
        else:
            assert isinstance(c["text"], str), c


def check_model(obj: Any) -> None:
    assert isinstance(obj, dict) and obj["object"] == "model", obj
    assert isinstance(obj["id"], str) and _int(obj["created"]) and isinstance(obj["owned_by"], str), obj


def check_embeddings(obj: Any) -> None:
    assert obj["object"] == "list" and isinstance(obj["model"], str), obj
    for i, d in enumerate(obj["data"]):
        assert d["object"] == "embedding" and d["index"] == i and isinstance(d["embedding"], (list, str)), d
    check_usage(obj["usage"])


def check_error(obj: Any) -> None:
    assert isinstance(obj, dict) and set(obj) == {"error"}, obj
    e = obj["error"]
    assert isinstance(e["message"], str) and e["message"], e
    assert isinstance(e["type"], str), e
    assert _str_or_none(e.get("param")), e
    assert e.get("code") is None or isinstance(e["code"], (str, int)), e


RESPONSE_STATUS = {"completed", "failed", "in_progress", "cancelled", "queued", "incomplete"}


def check_response(obj: Any, model: str | None = None) -> None:
    """`Response`: id, object "response", created_at, model, status enum, output [message items with
    output_text parts], usage {input_tokens, output_tokens, total_tokens, *_details objects} when present."""
    assert isinstance(obj, dict), obj
    assert isinstance(obj["id"], str) and obj["id"], obj
    assert obj["object"] == "response", obj
    assert isinstance(obj["created_at"], (int, float)) and not isinstance(obj["created_at"], bool), obj
    assert isinstance(obj["model"], str) and (model is None or obj["model"] == model), (obj["model"], model)
    assert obj["status"] in RESPONSE_STATUS, obj
    assert isinstance(obj["output"], list), obj
    for item in obj["output"]:
        assert isinstance(item, dict) and isinstance(item["type"], str), item
        if item["type"] == "message":
            assert item["role"] == "assistant" and isinstance(item["id"], str), item
            for part in item["content"]:
                assert part["type"] in ("output_text", "refusal"), part
                assert isinstance(part.get("text", part.get("refusal")), str), part
    usage = obj.get("usage")
    if usage is not None:
        for k in ("input_tokens", "output_tokens", "total_tokens"):
            assert _int(usage[k]), (k, usage)
        for k in ("input_tokens_details", "output_tokens_details"):
            assert isinstance(usage[k], dict), (k, usage)
