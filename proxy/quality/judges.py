"""Judges: does a cheaper answer hold up against the reference tier's answer to the same request?

A judge returns a score in [0, 1] (1: as good as the reference) or None when it cannot tell
(then no verdict is recorded: an unjudgeable pair says nothing about quality). Four kinds,
chosen by `quality.shadow.judge`:

- `exact`: the extracted final answer agrees: a JSON value, a multiple-choice letter, a final
  number (`#### 42`, `\\boxed{42}`, "the answer is 42"), else the normalised text;
- `embedding`: the two answers' cosine similarity under the sidecar's embedder reaches
  `quality.shadow.embedding_agree`;
- `llm`: the reference tier grades the pair against a fixed rubric, twice with the answers'
  positions swapped (position bias cancels); the score is the share of the two gradings in
  which the cheaper answer is at least as good;
- `feedback`: no shadow call; the application posts a score (`POST /v1/thrifty/feedback`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["EmbeddingJudge", "ExactJudge", "Judge", "LlmJudge", "answer_text", "final_answer"]

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*\(?([^\n.]+)", re.IGNORECASE)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?(?:[.):]|\s|$)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_SPACE = re.compile(r"\s+")


class Judge(Protocol):
    name: str

    async def score(self, question: str, cheap: str, reference: str) -> float | None:
        """1.0 when `cheap` is as good as `reference`, 0.0 when not, None when it cannot tell."""


def answer_text(body: dict[str, Any] | None) -> str | None:
    """The first choice's text of an OpenAI chat or completions answer."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    c = choices[0]
    msg = c.get("message")
    text = msg.get("content") if isinstance(msg, dict) else c.get("text")
    return text if isinstance(text, str) else None


def _number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return repr(float(found[-1].replace(",", "")))
    except ValueError:
        return None


def final_answer(text: str) -> str:
    """A canonical final answer: JSON value, choice letter, final number, else normalised text."""
    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            return "json:" + json.dumps(json.loads(stripped), sort_keys=True)
        except ValueError:
            pass
    for pattern in (_HASHES, _BOXED, _ANSWER_IS):
        found = pattern.findall(stripped)
        if found:
            tail = found[-1].strip()
            m = _CHOICE.match(tail)
            if m:
                return "choice:" + m.group(1).upper()
            n = _number(tail)
            return "number:" + n if n is not None else "text:" + _SPACE.sub(" ", tail.lower()).strip(" .")
    m = _CHOICE.match(stripped)
    if m and len(stripped) <= 3:
        return "choice:" + m.group(1).upper()
    if len(stripped) <= 40:
        n = _number(stripped)
        if n is not None and not re.search(r"[A-Za-z]{3,}", stripped):
            return "number:" + n
    return "text:" + _SPACE.sub(" ", stripped.lower()).strip(" .")


class ExactJudge:
    name = "exact"

    async def score(self, question: str, cheap: str, reference: str) -> float | None:
        return 1.0 if final_answer(cheap) == final_answer(reference) else 0.0


class EmbeddingJudge:
    """Cosine similarity of the two answers with the sidecar's own embedder."""

    name = "embedding"

    def __init__(self, embed: Callable[[str], Awaitable[np.ndarray]], agree: float) -> None:
        self.embed = embed
        self.agree = agree

    async def score(self, question: str, cheap: str, reference: str) -> float | None:
        if not cheap.strip() or not reference.strip():
            return None
        a, b = await self.embed(cheap), await self.embed(reference)
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        if denom == 0:
            return None
        return 1.0 if float(a @ b) / denom >= self.agree else 0.0


RUBRIC = (
    "You compare two answers to the same request. Judge correctness first, then completeness and "
    "following the request's instructions; ignore length and style.\n\n"
    "Request:\n{question}\n\nAnswer 1:\n{first}\n\nAnswer 2:\n{second}\n\n"
    "Reply with exactly one word: 1 if answer 1 is better, 2 if answer 2 is better, TIE if they are equally good."
)
_GRADE = re.compile(r"\b(1|2|TIE)\b", re.IGNORECASE)


class LlmJudge:
    """The reference tier grades the pair; `ask(prompt)` returns its reply text (None on failure)."""

    name = "llm"

    def __init__(self, ask: Callable[[str], Awaitable[str | None]]) -> None:
        self.ask = ask

    async def _grade(self, question: str, first: str, second: str) -> str | None:
        reply = await self.ask(RUBRIC.format(question=question[:4000], first=first[:4000], second=second[:4000]))
        m = _GRADE.search(reply or "")
        return m.group(1).upper() if m else None

    async def score(self, question: str, cheap: str, reference: str) -> float | None:
        a = await self._grade(question, cheap, reference)  # cheap first
        b = await self._grade(question, reference, cheap)  # positions swapped
        votes = [g in ("1", "TIE") for g in [a] if g is not None] + [g in ("2", "TIE") for g in [b] if g is not None]
        return sum(votes) / len(votes) if votes else None
