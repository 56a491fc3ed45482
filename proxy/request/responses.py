"""The Responses API's request, read as the chat messages it stands for.

`/v1/responses` takes `instructions` (a system message) and `input`: a string (one user
turn) or a list of items, of which messages (`{"role", "content"}`, content a string or
`input_text`/`output_text` parts) carry text; other items (function calls and their
outputs, reasoning) carry no prompt text the sidecar reads. The request path uses this
view for what it needs from a prompt: prefix blocks and load (`render_prompt`) and the
question the router scores (the last user turn).
"""

from __future__ import annotations

from typing import Any

_TEXT_PARTS = ("input_text", "output_text", "text")


def item_text(content: Any) -> str | None:
    """A message item's text, or None when it holds parts other than text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") in _TEXT_PARTS]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)  # type: ignore[arg-type]
    return None


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`instructions` + `input` as chat-style messages ({"role", "content"} with string content)."""
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item.get("type", "message") == "message" and isinstance(item.get("role"), str):
                text = item_text(item.get("content"))
                out.append({"role": item["role"], "content": text if text is not None else ""})
    return out


def last_user_turn(body: dict[str, Any]) -> str | None:
    """The question a router scores: the input when it is one string or ends with a user text turn."""
    value = body.get("input")
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        last = value[-1]
        if last.get("type", "message") == "message" and last.get("role") == "user":
            return item_text(last.get("content"))
    return None
