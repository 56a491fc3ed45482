"""OpenAI request parsing and response shapes for the fake replicas (`thrifty.sim`).

Contract: `parse_generation` validates a /v1/chat/completions or /v1/completions body into a
`Generation` (or raises `RequestError`, an OpenAI-style JSON error); `reply_body`,
`stream_chunk`, `content_choice`, `finish_choice` and `embeddings_body` build every answer
both servers send (the performance-modelled simulator and the instant stub are one server,
`http_server.SimServer`), so their shapes come from this one place. Shapes follow vLLM's
OpenAI server. There is no tokenizer and no model: prompt lengths are estimated (about four
characters per token, plus chat-template tokens per message), prefix-cache block hashes are
chained over those pseudo-tokens (so shared prefixes share blocks, as in vLLM), and the text
is deterministic filler.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4  # <|im_start|>role\n ... <|im_end|>\n
CHAT_GENERATION_PROMPT_TOKENS = 3  # <|im_start|>assistant\n
# Chat templates such as SmolLM2's and Qwen's insert a default system prompt when the
# request has none (Llama 3.1's adds a date line of similar length).
CHAT_DEFAULT_SYSTEM_TOKENS = 20
FILLER_WORDS = (
    "the", "model", "is", "simulated", "and", "this", "text", "is", "filler", "that", "stands", "in",
    "for", "a", "real", "answer", "so", "timing", "and", "metrics", "can", "be", "tested", "without", "weights",
)


class RequestError(Exception):
    """A bad request: becomes an OpenAI-style JSON error with this status."""

    def __init__(self, message: str, *, status: int = 400, err_type: str = "BadRequestError", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.err_type, "param": self.param, "code": self.status}}


@dataclass(slots=True)
class Generation:
    """One validated /v1/chat/completions or /v1/completions request."""

    kind: str  # "chat" | "completion"
    model: str
    prompts: list[tuple[int, tuple[int, ...]]]  # (prompt tokens, block hashes) per prompt
    n: int
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    logprobs: int | None  # None = not requested; else number of top logprobs
    seed: int
    tool_name: str | None = None  # chat with `tools` (and tool_choice not "none"): answer with a call to it
    created: int = field(default_factory=lambda: int(time.time()))
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def output_lengths(self, max_model_len: int) -> list[list[tuple[int, str]]]:
        """Per prompt, per choice: (tokens to generate, finish reason)."""
        rng = random.Random(self.seed)
        result = []
        for prompt_tokens, _ in self.prompts:
            room = max_model_len - prompt_tokens
            limit = room if self.max_tokens is None else min(self.max_tokens, room)
            choices = []
            for _ in range(self.n):
                natural = max(1, int(rng.lognormvariate(math.log(120), 0.7)))  # when the "model" would stop
                length = limit if self.ignore_eos else min(limit, max(natural, self.min_tokens))
                choices.append((max(1, length), "length" if length >= limit else "stop"))
            result.append(choices)
        return result


def _lax(kind: type, value: Any, name: str) -> Any:
    """`value` coerced as vLLM's pydantic request models coerce it (lax mode: 1.0 -> 1, "0.5" -> 0.5)."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError:
        raise RequestError(f"{name} must be {'an integer' if kind is int else 'a ' + kind.__name__}", param=name) from None


def _int_field(body: dict[str, Any], name: str, default: int | None, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:  # absent or null: the default, as vLLM's request models do
        value = default
    if value is None:
        return None
    value = _lax(int, value, name)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"{name} must be {bound}, got {value}", param=name)
    return value


def _message_text(message: Any, index: int) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise RequestError(f"messages[{index}] must be an object", param="messages")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise RequestError(f"messages[{index}].role must be a non-empty string", param="messages")
    content = message.get("content")
    if content is None:
        return role, ""
    if isinstance(content, str):
        return role, content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise RequestError(f"messages[{index}].content parts must be objects", param="messages")
            if isinstance(part.get("text"), str):  # other parts (images, odd shapes) carry no text for this model
                parts.append(part["text"])
        return role, "\n".join(parts)
    raise RequestError(f"messages[{index}].content must be a string or a list of parts", param="messages")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def block_hashes(pieces: list[str], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of the full blocks of pseudo-tokens (a hash covers its whole prefix, as in vLLM)."""
    hashes = []
    parent = b""
    for start in range(0, len(pieces) - block_tokens + 1, block_tokens):
        digest = hashlib.blake2b(parent + "\x00".join(pieces[start:start + block_tokens]).encode(), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "big"))
        parent = digest
    return tuple(hashes)


def _pseudo_tokens(text: str) -> list[str]:
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def chat_prompt(messages: list[tuple[str, str]], block_tokens: int) -> tuple[int, tuple[int, ...]]:
    pieces: list[str] = []
    if not any(role == "system" for role, _ in messages):
        pieces.extend(["<|im_start|>system"] * CHAT_DEFAULT_SYSTEM_TOKENS)
    for role, text in messages:
        pieces.append(f"<|im_start|>{role}")
        pieces.extend(_pseudo_tokens(text))
        pieces.extend([""] * (CHAT_TOKENS_PER_MESSAGE - 1))
    pieces.extend(["<|im_start|>assistant"] * CHAT_GENERATION_PROMPT_TOKENS)
    return len(pieces), block_hashes(pieces, block_tokens)


def completion_prompt(text: str, block_tokens: int) -> tuple[int, tuple[int, ...]]:
    pieces = _pseudo_tokens(text) or [""]
    return len(pieces), block_hashes(pieces, block_tokens)


def _tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none":
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestError("tools must be a list of objects", param="tools")
    function = tools[0].get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else "f"


def parse_generation(kind: str, body: Any, served_names: list[str] | None, block_tokens: int) -> Generation:
    """Validate a request body; raises RequestError with an OpenAI-style message.

    `served_names` None accepts any model name (the answer echoes it)."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    model = body.get("model", served_names[0] if served_names else "")
    if not isinstance(model, str) or (served_names is not None and model not in served_names):
        raise RequestError(f"The model `{model}` does not exist.", status=404, err_type="NotFoundError", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list", param="messages")
        prompts = [chat_prompt([_message_text(m, i) for i, m in enumerate(messages)], block_tokens)]
        max_tokens = _int_field(body, "max_completion_tokens", None, low=1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", None, low=1)
        logprobs_flag = _lax(bool, body.get("logprobs") or False, "logprobs")
        top = _int_field(body, "top_logprobs", 0, low=0, high=20)
        logprobs = top if logprobs_flag else None
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            texts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            texts = prompt
        else:
            raise RequestError("prompt must be a string or a non-empty list of strings", param="prompt")
        prompts = [completion_prompt(t, block_tokens) for t in texts]
        max_tokens = _int_field(body, "max_tokens", 16, low=1)
        logprobs = _int_field(body, "logprobs", None, low=0, high=20)
    n = _int_field(body, "n", 1, low=1, high=128)
    assert n is not None
    stream = _lax(bool, body.get("stream") or False, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    if options and not stream:
        raise RequestError("Stream options can only be defined when `stream=True`.", param="stream_options")
    seed = body.get("seed")
    if seed is not None:
        seed = _lax(int, seed, "seed")
    ignore_eos = _lax(bool, body.get("ignore_eos") or False, "ignore_eos")
    min_tokens = _int_field(body, "min_tokens", 0, low=0)
    assert min_tokens is not None
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None:
            _lax(float, value, name)
    digest = hashlib.blake2b(repr((kind, prompts)).encode(), digest_size=4).digest()
    return Generation(
        kind=kind, model=model, prompts=prompts, n=n, max_tokens=max_tokens, min_tokens=min_tokens,
        ignore_eos=ignore_eos, stream=stream, include_usage=_lax(bool, options.get("include_usage") or False, "stream_options"),
        logprobs=logprobs, seed=seed if seed is not None else int.from_bytes(digest, "big"),
        tool_name=_tool_name(body) if kind == "chat" else None,
    )


def filler_token(position: int, salt: int) -> str:
    """The deterministic text of generated token `position`."""
    return " " + FILLER_WORDS[(position + salt) % len(FILLER_WORDS)]


def filler_text(start: int, count: int, salt: int) -> tuple[list[str], str]:
    tokens = [filler_token(start + i, salt) for i in range(count)]
    return tokens, "".join(tokens)


def _fake_logprob(token: str, rank: int) -> float:
    return -0.05 - 0.7 * rank - (len(token) % 5) * 0.01


def chat_logprobs(tokens: list[str], top: int) -> dict[str, Any]:
    """vLLM/OpenAI chat logprobs shape; values are fixed fakes (the simulator has no model)."""
    content = []
    for token in tokens:
        alternatives = [token] + [" " + w for w in FILLER_WORDS[:top] if " " + w != token][: max(0, top - 1)]
        content.append({
            "token": token, "logprob": _fake_logprob(token, 0), "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": alt, "logprob": _fake_logprob(alt, rank), "bytes": list(alt.encode())}
                for rank, alt in enumerate(alternatives[:top])
            ],
        })
    return {"content": content}


def completion_logprobs(tokens: list[str], top: int, offset: int) -> dict[str, Any]:
    """Legacy completions logprobs shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    offsets = []
    position = offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    tops = []
    for token in tokens:
        alternatives = [token] + [" " + w for w in FILLER_WORDS if " " + w != token]
        tops.append({alt: _fake_logprob(alt, rank) for rank, alt in enumerate(alternatives[: max(1, top)])})
    return {
        "tokens": tokens, "token_logprobs": [_fake_logprob(t, 0) for t in tokens],
        "top_logprobs": tops, "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens, "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


# ----------------------------------------------------------------- response shapes


def _header(gen: Generation, *, chunk: bool) -> dict[str, Any]:
    chat = gen.kind == "chat"
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": ("chatcmpl-" if chat else "cmpl-") + gen.request_id, "object": obj, "created": gen.created, "model": gen.model}


def reply_choice(gen: Generation, key: int, tokens: list[str], text: str, reason: str) -> dict[str, Any]:
    """One choice of a non-streamed answer (a tool call instead of text when `gen.tool_name` is set)."""
    if gen.kind != "chat":
        return {"index": key, "text": text,
                "logprobs": completion_logprobs(tokens, gen.logprobs, 0) if gen.logprobs is not None else None,
                "finish_reason": reason, "stop_reason": None}
    message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": []}
    if gen.tool_name is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{key}", "type": "function", "function": {"name": gen.tool_name, "arguments": "{}"}}]}
        reason = "tool_calls"
    return {"index": key, "message": message,
            "logprobs": chat_logprobs(tokens, gen.logprobs) if gen.logprobs is not None else None,
            "finish_reason": reason, "stop_reason": None}


def reply_body(gen: Generation, choices: list[dict[str, Any]], usage_body: dict[str, Any]) -> dict[str, Any]:
    return {**_header(gen, chunk=False), "choices": choices, "usage": usage_body}


def content_choice(gen: Generation, key: int, tokens: list[str], text: str, *, first: bool, offset: int) -> dict[str, Any]:
    """A streamed choice carrying new text; a chat choice's first one also carries the role."""
    if gen.kind != "chat":
        return {"index": key, "text": text,
                "logprobs": completion_logprobs(tokens, gen.logprobs, offset) if gen.logprobs is not None else None,
                "finish_reason": None}
    delta = {"role": "assistant", "content": text} if first else {"content": text}
    return {"index": key, "delta": delta,
            "logprobs": chat_logprobs(tokens, gen.logprobs) if gen.logprobs is not None else None, "finish_reason": None}


def finish_choice(gen: Generation, key: int, reason: str) -> dict[str, Any]:
    """The streamed choice that ends one choice (no new text)."""
    if gen.kind != "chat":
        return {"index": key, "text": "", "logprobs": None, "finish_reason": reason, "stop_reason": None}
    return {"index": key, "delta": {}, "logprobs": None, "finish_reason": reason, "stop_reason": None}


def stream_chunk(gen: Generation, choices: list[dict[str, Any]], usage_body: dict[str, Any] | None = None) -> bytes:
    """One SSE event; `usage_body` only on the final usage chunk (sent when include_usage was asked)."""
    chunk = {**_header(gen, chunk=True), "choices": choices}
    if usage_body is not None:
        chunk["usage"] = usage_body
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


STREAM_END = b"data: [DONE]\n\n"


def embeddings_body(model: Any, count: int) -> dict[str, Any]:
    """A fixed 3-d vector per input (the fakes embed nothing)."""
    return {"object": "list", "model": model, "usage": usage(count, 0, 0),
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)]}
