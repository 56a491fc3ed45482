"""The cost bench's workload: trace arrivals dressed with real prompts, labels and repeats.

Each request keeps its trace slot's arrival time and token counts and takes a *question*:
- fresh: the next row of the routing file (a seeded hash order of the rows the router
  was not trained on); the router scores the row's prompt and the row's labels say
  whether each tier's model answers it correctly;
- exact repeat: the same text as an earlier request of the same tenant (same question);
- paraphrase: `text_b` of a QQP pair whose `text_a` an earlier fresh request of the same
  tenant was rewritten to (the pair's question keeps that request's routing row). A
  label-1 pair is the same question (same row, same answer quality); a label-0 pair is
  a different question (a fresh row), so a semantic-cache hit on it is a wrong answer.
The caches see the surface text (routing prompt or QQP question); the router and the
labels see the routing row: a QQP request stands for its row's question, reworded.

When the fresh requests outnumber the rows, the rows are reused by a new tenant (caches
are partitioned by tenant, so a reused row is a fresh request, never a cache hit).
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thrifty.sim.fleet import TraceRequest


@dataclass(slots=True)
class Question:
    """One request's content: what the caches, the router and the labels see."""

    kind: str  # "fresh" | "repeat" | "paraphrase" (label-1 pair) | "lookalike" (label-0 pair)
    tenant: int
    text: str  # surface text: the cache key and the semantic-cache query
    row: int  # routing row: router input (its prompt) and per-model labels
    qid: int  # question identity: same qid = same question (a correct cache hit)


class WorkloadError(ValueError):
    """An input file that cannot make a workload; the message is one line."""


def _order(seed: int, text: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()


def load_pairs(path: str | Path, *, exclude: frozenset[int], max_pairs: int, seed: int) -> list[tuple[str, str, int]]:
    """QQP-format pairs the verifier never saw, in a seeded hash order, at most `max_pairs`."""
    from thrifty.proxy.levers.verifier import pair_hash

    from thrifty.training.qqp_pairs import read_pairs

    pairs = [(a, b, label) for a, b, label in read_pairs(path, error=WorkloadError)
             if a.strip() and b.strip() and a != b and pair_hash(a, b) not in exclude]
    if not pairs:
        raise WorkloadError(f"{path}: no usable pairs (all were used to train the verifier, or the file is empty)")
    pairs.sort(key=lambda p: _order(seed, p[0] + "\x00" + p[1]))
    return pairs[:max_pairs] if max_pairs > 0 else pairs


def order_rows(prompts: list[str], usable: np.ndarray, seed: int, max_rows: int) -> list[int]:
    rows = sorted(np.flatnonzero(usable).tolist(), key=lambda i: _order(seed, prompts[i]))
    return rows[:max_rows] if max_rows > 0 else rows


def build_questions(
    trace: list[TraceRequest],
    rows: list[int],
    prompts: list[str],
    pairs: list[tuple[str, str, int]],
    *,
    repeat_share: float,
    exact_fraction: float = 0.5,
    window_s: float = 1800.0,
    seed: int = 0,
) -> tuple[list[Question], int, int]:
    """Deterministic questions for the trace. Returns (questions, tenants, pairs used)."""
    if not rows:
        raise WorkloadError("no routing rows to draw prompts from")
    rng = random.Random(seed)
    questions: list[Question] = []
    repeat_of: dict[int, int] = {}  # exact repeats, resolved once every rewrite to a text_a is done
    fresh_count = 0
    next_qid = 0
    recent: deque[tuple[float, int]] = deque()  # (arrival, index) of any earlier request
    rewritable: deque[tuple[float, int]] = deque()  # fresh requests that may become a text_a
    rewritten: set[int] = set()
    pair_cursor: dict[int, int] = {}  # tenant -> next pair (pairs never repeat within a tenant)
    pairs_used = 0

    def fresh(kind: str = "fresh") -> Question:
        nonlocal fresh_count, next_qid
        tenant, pos = divmod(fresh_count, len(rows))
        fresh_count += 1
        next_qid += 1
        row = rows[pos]
        return Question(kind, tenant, prompts[row], row, next_qid)

    def pick_rewritable() -> int | None:
        for _ in range(8):
            _, j = rewritable[rng.randrange(len(rewritable))]
            if j not in rewritten:
                return j
        return None

    for i, slot in enumerate(trace):
        while recent and recent[0][0] < slot.arrival - window_s:
            recent.popleft()
        while rewritable and rewritable[0][0] < slot.arrival - window_s:
            rewritable.popleft()
        q: Question | None = None
        if rng.random() < repeat_share and recent:
            j = pick_rewritable() if pairs and rewritable and rng.random() >= exact_fraction else None
            if j is not None and pair_cursor.get(questions[j].tenant, 0) < len(pairs):
                original = questions[j]
                k = pair_cursor.get(original.tenant, 0)
                pair_cursor[original.tenant] = k + 1
                pairs_used += 1
                a, b, label = pairs[k]
                original.text = a  # the earlier request asked text_a
                rewritten.add(j)
                if label == 1:
                    q = Question("paraphrase", original.tenant, b, original.row, original.qid)
                else:
                    other = fresh("lookalike")
                    q = Question("lookalike", original.tenant, b, other.row, other.qid)
            else:
                _, j = recent[rng.randrange(len(recent))]
                repeat_of[i] = j
                q = questions[j]  # placeholder, resolved below
        if q is None:
            q = fresh()
            rewritable.append((slot.arrival, i))
        questions.append(q)
        recent.append((slot.arrival, i))
    for i in sorted(repeat_of):  # originals precede their repeats, so one ordered pass resolves chains
        src = questions[repeat_of[i]]
        questions[i] = Question("repeat", src.tenant, src.text, src.row, src.qid)
    tenants = (fresh_count - 1) // len(rows) + 1 if fresh_count else 1
    return questions, tenants, pairs_used
