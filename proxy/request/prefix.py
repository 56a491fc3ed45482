"""Prefix blocks of a request: the key for prefix-cache affinity.

The rendered prompt is cut into fixed-size blocks and each block gets a chained hash
(CRC-32 continued over the whole prefix), so two requests share block i exactly when
they share the first i+1 blocks of text, as an engine's prefix cache would. Only the
first `max_blocks` are hashed: enough to tell conversations apart, cheap on long prompts.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from thrifty.proxy.request.responses import responses_messages

BLOCK_CHARS = 256
MAX_BLOCKS = 64
VIEW_EDGE_CHARS = 4096  # a bounded view keeps this much of each end of a long text


def render_prompt(endpoint: str, body: dict[str, Any]) -> str:
    """A stable text rendering of what the engine will see as the prompt prefix."""
    if endpoint in ("chat", "responses"):
        parts: list[str] = []
        messages = body.get("messages") if endpoint == "chat" else responses_messages(body)
        for m in messages or ():
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


def bounded_view(text: str, edge_chars: int = VIEW_EDGE_CHARS) -> str:
    """`text` itself when short; else its first and last `edge_chars` characters around a
    marker that names the cut length and a digest of the whole text.

    What is embedded, compared and stored for the semantic cache and the router is this
    view, so a multi-megabyte prompt costs what an 8 KB one does (the encoder reads only
    its first ~256 tokens and the router its last 1,000 characters anyway). The digest
    keeps two long texts that differ only in the middle from looking identical."""
    if len(text) <= 2 * edge_chars + 64:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{text[:edge_chars]}\n[... {len(text) - 2 * edge_chars} characters, blake2b {digest} ...]\n{text[-edge_chars:]}"
