"""The cost bench's request path before the engines: exact cache, semantic cache, router.

Runs the sidecar's real lever components (`ExactCache`, `SemanticCache` with the shipped
`Verifier`, `pick_tier` on the router's ease score) over the workload in arrival order on
a virtual clock. An answer becomes cacheable `store_delay_s` after its request arrived
(the time to generate it; a repeat arriving sooner misses, as in the sidecar, which
stores only complete answers). Requests are deterministic (temperature 0), so the exact
cache may answer them. A hit's quality is the stored answer's quality when the hit is
the same question, and 0 when it is not (a label-0 paraphrase or another question).
A request of the savings ledger's control group (`control`) takes the baseline path, as in
the sidecar (proxy/quality/ledger.py): no cache lookup or store, no router, the reference tier.
A prompt over the engines' context (`servable` False) is routed and rejected there (vLLM's 400):
no engine answered it, so no cache holds an answer to it or gives one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from thrifty.bench._cost_workload import Question
from thrifty.proxy.levers.exact_cache import ExactCache, request_key
from thrifty.proxy.levers.semantic_cache import PairVerifier, SemanticCache, partition_key

MODEL_ALIAS = "thrifty"  # the model name clients ask for; the sidecar picks the tier
CHARS_PER_TOKEN = 4  # stored answer size, for the caches' byte budgets


@dataclass(slots=True)
class Outcome:
    """What happened to one request before the engines."""

    tier: str | None  # None: answered from a cache
    cache: str | None  # "exact" | "semantic" | None
    quality: float  # the answer's quality (label of the model that produced it)
    wrong_hit: bool = False  # a cache answered a different question
    source: str | None = None  # the tier whose answer this is (for a hit: the tier that produced the stored one)
    control: bool = False  # the savings ledger's control group: served by the baseline path


@dataclass(frozen=True, slots=True)
class LeverSettings:
    exact_cache: bool
    semantic_cache: bool
    max_bytes: int = 256 * 1024 * 1024  # config defaults (thrifty.config CacheSettings)
    ttl_s: float = 3600.0
    store_delay_s: float = 30.0


def _body(question: Question) -> dict:
    return {"messages": [{"role": "user", "content": question.text}], "model": MODEL_ALIAS, "temperature": 0}


def run_levers(
    questions: list[Question],
    arrivals: list[float],
    output_tokens: list[int],
    tier_of_row: np.ndarray,  # per routing row: index into `tiers`
    tiers: list[str],
    quality_of: np.ndarray,  # (rows, len(tiers)): label of each tier's model per row
    vectors: dict[str, np.ndarray],  # text -> unit vector (semantic cache only)
    settings: LeverSettings,
    verifier: PairVerifier | None,
    similarity_floor: float,
    control: np.ndarray | None = None,  # per request: True = control group (baseline path)
    online=None,  # a `_cost_online.OnlineRouter`: routes with the threshold in force instead of `tier_of_row`
    servable: np.ndarray | None = None,  # per request: False = prompt over the engines' context
) -> list[Outcome]:
    reference = len(tiers) - 1  # the baseline tier: the last (largest) one
    now = 0.0

    def clock() -> float:
        return now

    exact = ExactCache(settings.max_bytes, settings.ttl_s, clock=clock) if settings.exact_cache else None
    semantic = None
    if settings.semantic_cache:
        dim = len(next(iter(vectors.values())))
        semantic = SemanticCache(dim, max_bytes=settings.max_bytes, ttl_s=settings.ttl_s,
                                 similarity_floor=similarity_floor, verifier=verifier, clock=clock)
    pending: list[tuple[float, int, str, str, dict, Question]] = []  # answers not yet complete
    outcomes: list[Outcome] = []
    for i, (q, t) in enumerate(zip(questions, arrivals, strict=True)):
        while pending and pending[0][0] <= t:
            now, _, key, partition, stored, sq = heapq.heappop(pending)
            if exact is not None:
                exact.put(key, stored)
            if semantic is not None:
                semantic.put(partition, sq.text, vectors[sq.text], stored)
        now = t
        if control is not None and control[i]:
            quality = float(quality_of[q.row, reference])
            outcomes.append(Outcome(tiers[reference], None, quality, source=tiers[reference], control=True))
            continue
        cacheable = servable is None or bool(servable[i])
        tenant = f"tenant-{q.tenant}"
        body = _body(q)
        key = request_key(tenant, "chat", body)
        partition = partition_key(tenant, {"model": MODEL_ALIAS, "temperature": 0, "endpoint": "chat", "earlier_turns": []})
        hit: dict | None = None
        kind = None
        same = False
        if exact is not None and cacheable:
            hit = exact.get(key)
            kind, same = ("exact", True) if hit is not None else (None, False)  # the very same text
        if hit is None and semantic is not None and cacheable:
            found = semantic.lookup(partition, q.text, vectors[q.text])
            if found is not None:
                hit, kind = found.body, "semantic"
                same = hit["qid"] == q.qid or found.cached_text == q.text
        if hit is not None:
            outcomes.append(Outcome(None, kind, hit["quality"] if same else 0.0, wrong_hit=not same, source=hit["tier"]))
            continue
        t_idx = online.route(i, q.row, t) if online is not None else int(tier_of_row[q.row])
        quality = float(quality_of[q.row, t_idx])
        outcomes.append(Outcome(tiers[t_idx], None, quality, source=tiers[t_idx]))
        if cacheable and (exact is not None or semantic is not None):
            stored = {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * (CHARS_PER_TOKEN * output_tokens[i])},
                             "finish_reason": "stop"}],
                "qid": q.qid,
                "quality": quality,
                "tier": tiers[t_idx],
            }
            heapq.heappush(pending, (t + settings.store_delay_s, i, key, partition, stored, q))
    return outcomes
