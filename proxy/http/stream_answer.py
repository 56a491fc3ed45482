"""`StreamAnswer`: the first choice's text of a relayed chat/completions stream, for the shadow judge.

Why: a streamed answer is forwarded event by event and never kept, so without this a
shadow-sampled streaming request had nothing to judge (only `feedback` could score it).
The relay taps the events the client received into one of these, only for requests the
quality loop sampled, and hands the assembled answer on as if it had been a plain reply.
Bounded: text past `max_chars` is dropped (the judges compare final answers and openings).
"""

from __future__ import annotations

import json
from typing import Any

MAX_CHARS = 64_000


class StreamAnswer:
    def __init__(self, endpoint: str, max_chars: int = MAX_CHARS) -> None:
        self.chat = endpoint == "chat"
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.chars = 0
        self.finished = False  # a finish_reason arrived for the first choice

    def feed(self, events: bytes) -> None:
        """Whole SSE events (as relayed to the client); anything unparsable is skipped."""
        for event in events.split(b"\n\n"):
            if not event.startswith(b"data: ") or event.startswith(b"data: [DONE]"):
                continue
            try:
                chunk = json.loads(event[6:])
            except ValueError:
                continue
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            for choice in choices if isinstance(choices, list) else ():
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    self._take(choice)

    def _take(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") if self.chat else choice
        text = delta.get("content") if self.chat and isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text and self.chars < self.max_chars:
            text = text[: self.max_chars - self.chars]
            self.parts.append(text)
            self.chars += len(text)
        if choice.get("finish_reason"):
            self.finished = True

    def body(self) -> dict[str, Any] | None:
        """The answer in the non-streaming shape (`answer_text` reads it); None if no choice finished."""
        if not self.finished:
            return None
        text = "".join(self.parts)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}} if self.chat \
            else {"index": 0, "text": text}
        return {"object": "chat.completion" if self.chat else "text_completion", "choices": [choice]}
