"""Prefix blocks of a request: the key for prefix-cache affinity.

The rendered prompt is cut into fixed-size blocks and each block gets a chained hash
(CRC-32 continued over the whole prefix), so two requests share block i exactly when
they share the first i+1 blocks of text, as an engine's prefix cache would. Only the
first `max_blocks` are hashed: enough to tell conversations apart, cheap on long prompts.
"""

from __future__ import annotations

import zlib
from typing import Any

BLOCK_CHARS = 256
MAX_BLOCKS = 64


def render_prompt(endpoint: str, body: dict[str, Any]) -> str:
    """A stable text rendering of what the engine will see as the prompt prefix."""
    if endpoint == "chat":
        parts: list[str] = []
        for m in body.get("messages") or ():
            if not isinstance(m, dict):
                continue
            parts.append(str(m.get("role", "")))
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "\x1e".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    return repr(prompt)[: BLOCK_CHARS * MAX_BLOCKS]


def block_hashes(text: str, *, block_chars: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS) -> tuple[int, ...]:
    data = text[: block_chars * max_blocks].encode("utf-8", "surrogatepass")
    out: list[int] = []
    h = 0
    for start in range(0, len(data), block_chars):
        h = zlib.crc32(data[start : start + block_chars], h)
        out.append(h)
    return tuple(out)


def estimate_tokens(text: str) -> int:
    """~4 characters per token: good enough to weigh load, never used for billing."""
    return len(text) // 4 + 1
