"""The Responses API on the fake replicas (`thrifty.sim`), in vLLM's shapes.

vLLM's OpenAI server answers `POST /v1/responses` (plain or streamed as typed events) and
keeps each response in the replica's memory, so `previous_response_id` continues a
conversation and `GET /v1/responses/{id}` retrieves it, on that replica only. Here a
request is turned into the chat generation it stands for (earlier turns from the store,
`instructions` as a system message, `input` items as turns), answered by the same engine,
and wrapped in the Responses shapes below.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from typing import Any

from thrifty.proxy.request.responses import responses_messages
from thrifty.sim.openai_api import RequestError

MAX_STORED = 10_000  # responses a replica keeps (oldest dropped), as a bound on its memory


class ResponseStore:
    """Responses kept on one replica: id -> (the conversation's messages incl. this answer, the body)."""

    def __init__(self, max_entries: int = MAX_STORED) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = OrderedDict()

    def put(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        self._items[body["id"]] = (messages, body)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        return self._items.get(response_id)


def not_found(response_id: str) -> RequestError:
    return RequestError(f"Response with id '{response_id}' not found.", status=404, err_type="NotFoundError",
                        param="previous_response_id")


def chat_request(body: Any, store: ResponseStore) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat body a Responses request stands for, and the conversation's messages so far."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    value = body.get("input")
    if not isinstance(value, (str, list)):
        raise RequestError("input must be a string or a list of items", param="input")
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        found = store.get(previous) if isinstance(previous, str) else None
        if found is None:
            raise not_found(str(previous))
        history = list(found[0])
    messages = history + responses_messages(body)
    if not messages:
        raise RequestError("input has no message to answer", param="input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages, "stream": body.get("stream") or False}
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    return chat, messages


def response_body(request: dict[str, Any], model: str, response_id: str, created: int, text: str,
                  usage: dict[str, int] | None, *, status: str = "completed") -> dict[str, Any]:
    output = [] if status != "completed" else [message_item(response_id, text)]
    return {
        "id": response_id, "object": "response", "created_at": created, "model": model, "status": status,
        "output": output, "error": None, "incomplete_details": None,
        "instructions": request.get("instructions"), "metadata": request.get("metadata"),
        "parallel_tool_calls": True, "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "tool_choice": "auto", "tools": [], "max_output_tokens": request.get("max_output_tokens"),
        "previous_response_id": request.get("previous_response_id"), "text": {"format": {"type": "text"}},
        "truncation": "disabled", "usage": usage, "user": None,
    }


def message_item(response_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {"id": "msg_" + response_id[5:], "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}


def response_usage(prompt_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens}


def new_response_id() -> tuple[str, int]:
    return "resp_" + uuid.uuid4().hex, int(time.time())


class EventWriter:
    """Typed SSE events with their `sequence_number`, as vLLM streams a response."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()
