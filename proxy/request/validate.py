"""Parse and validate OpenAI request bodies before anything else touches them.

Only the fields the sidecar needs (routing, caching, accounting) or that are unsafe
(sizes, depth, `n`) are checked, and never more strictly than vLLM behind it: scalars
are coerced as vLLM's pydantic models coerce them (`n: 1.0`, `max_tokens: "2"`,
`temperature: "0.5"` are fine; `max_tokens: 1.5` is not), any string is a role (vLLM
takes custom roles). Unknown fields pass through untouched, so new OpenAI parameters
keep working. Every failure is an `ApiError` with a 4xx status and the offending `param`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from thrifty.proxy.http.errors import ApiError

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_TOKENS_LIMIT = 1 << 20
MAX_JSON_DEPTH = 256  # deeper bodies are refused: re-encoding them would hit Python's recursion limit
_LAX = {int: TypeAdapter(int), float: TypeAdapter(float), bool: TypeAdapter(bool)}  # pydantic lax mode, as vLLM
_REQUEST_ID = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")  # an RFC 9110 token
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
             "/v1/responses": "responses"}


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str  # "chat" | "completions" | "embeddings"
    body: dict[str, Any]
    model: str
    stream: bool


def request_id_of(value: str | None) -> str | None:
    """The client's X-Request-Id when it is a short RFC 9110 token, else None (a fresh id is made).

    The id is echoed in a response header and written to the access log, so anything
    else (spaces, quotes, control bytes, a long value) is not reflected."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None


def check_content_type(content_type: str) -> None:
    if content_type != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}", param="content-type")


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth_exceeds(body, MAX_JSON_DEPTH):
        raise ApiError(400, f"request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative: no recursion to overflow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def lax(kind: type, value: Any) -> Any:
    """`value` coerced as vLLM's request models coerce it (pydantic lax mode); ValueError if they would refuse it."""
    try:
        return _LAX[kind].validate_python(value)
    except ValidationError:
        raise ValueError(f"not {kind.__name__}") from None


def lax_bool(value: Any) -> bool:
    """A flag as vLLM reads it (`"false"` is false); anything it would refuse counts as false."""
    try:
        return bool(lax(bool, value))
    except ValueError:
        return False


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a streaming request asked for the trailing usage chunk."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and lax_bool(opts.get("include_usage"))


def _in_range(body: dict[str, Any], key: str, lo: float, hi: float, *, integer: bool) -> None:
    """`body[key]`, when present, is an integer (or any number), as vLLM coerces it, within [lo, hi]."""
    v = body.get(key)
    if v is None:
        return
    try:
        n = lax(int if integer else float, v)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{key}' must be {kind}, got {type(v).__name__}", param=key) from None
    if not lo <= n <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {v}", param=key)


def _int_range(body: dict[str, Any], key: str, lo: int, hi: int) -> None:
    _in_range(body, key, lo, hi, integer=True)


def _number_range(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    _in_range(body, key, lo, hi, integer=False)


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"'messages[{i}]' must be an object", param=f"messages[{i}]")
        if not isinstance(m.get("role"), str):  # any string: vLLM takes custom roles
            raise ApiError(400, f"'messages[{i}].role' must be a string", param=f"messages[{i}].role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(400, f"'messages[{i}].content' must be a string or an array", param=f"messages[{i}].content")


def _check_prompt(prompt: Any) -> None:
    if prompt is None:
        raise ApiError(400, "'prompt' is required", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and (
        all(isinstance(p, str) for p in prompt)
        or all(_is_int(p) for p in prompt)
        or all(isinstance(p, list) and all(_is_int(t) for t in p) for p in prompt)
    ):
        return
    raise ApiError(400, "'prompt' must be a string, an array of strings, or token ids", param="prompt")


def _check_input(value: Any) -> None:
    if value is None:
        raise ApiError(400, "'input' is required", param="input")
    if isinstance(value, str) or (isinstance(value, list) and value):
        return
    raise ApiError(400, "'input' must be a string or a non-empty array", param="input")


def _check_response_input(value: Any) -> None:
    if value is None:
        raise ApiError(400, "'input' is required", param="input")
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, dict) for item in value)):
        return
    raise ApiError(400, "'input' must be a string or an array of input items", param="input")


def validate(endpoint: str, body: dict[str, Any], *, max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT) -> ParsedRequest:
    """Check `body` for `endpoint`; return the parts the request path needs."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    try:
        stream = bool(lax(bool, body.get("stream") or False))
    except ValueError:
        raise ApiError(400, "'stream' must be a boolean", param="stream") from None
    if endpoint == "embeddings":
        _check_input(body.get("input"))
        return ParsedRequest(endpoint, body, model, False)
    if endpoint == "responses":
        _check_response_input(body.get("input"))
        _int_range(body, "max_output_tokens", 1, max_tokens_limit)
        _number_range(body, "temperature", 0, math.inf)
        _number_range(body, "top_p", 0, 1)
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise ApiError(400, "'previous_response_id' must be a string", param="previous_response_id")
        return ParsedRequest(endpoint, body, model, stream)
    if endpoint == "chat":
        _check_messages(body.get("messages"))
        _int_range(body, "max_completion_tokens", 1, max_tokens_limit)
        _int_range(body, "top_logprobs", 0, 20)
        logprobs = body.get("logprobs")
        if logprobs is not None:
            try:
                lax(bool, logprobs)
            except ValueError:
                raise ApiError(400, "'logprobs' must be a boolean", param="logprobs") from None
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise ApiError(400, "'tools' must be an array of objects", param="tools")
    else:
        _check_prompt(body.get("prompt"))
        _int_range(body, "logprobs", 0, 20)
    _int_range(body, "max_tokens", 1, max_tokens_limit)
    _int_range(body, "n", 1, 128)
    _number_range(body, "temperature", 0, math.inf)  # vLLM has no upper bound
    _number_range(body, "top_p", 0, 1)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return ParsedRequest(endpoint, body, model, stream)
