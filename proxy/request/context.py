"""`RequestContext`: what the steps of the request path learn about one request.

The pipeline creates one per request on arrival and every step reads and writes it:
validation fills in the request, the levers their decisions, the relay the outcome,
and the finish step accounts and logs from it. One object instead of tuples, so a
step's inputs and outputs have names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thrifty.proxy.observe.accounting import Usage

TIER_HEADER = "X-Thrifty-Tier"  # request: force this tier; reply and passthrough: the tier that answers
CACHE_HEADER = "X-Thrifty-Cache"  # request: `bypass` skips the caches; reply: `exact` | `semantic` on a hit


@dataclass(slots=True)
class RequestContext:
    """One request, from arrival to its access-log line."""

    request_id: str
    endpoint: str  # "chat" | "completions" | "embeddings"
    # the request (filled in once it validated)
    body: dict[str, Any] = field(default_factory=dict)  # the parsed, validated OpenAI request body
    model_alias: str = ""  # the model name the client sent
    tenant: str = ""  # from the API key (hashed) or `X-Thrifty-Tenant`; never logged raw
    lane: str = "default"  # admission lane from `service_tier`: "priority" | "default" | "flex"
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased request headers, minus credentials
    requested_tier: str = ""  # the tier the alias maps to (the client's intent); "" until validated
    # the levers' decisions
    tier: str = ""  # the tier that answers (after routing)
    pinned_replica: str = ""  # a Responses follow-up: the replica holding `previous_response_id`
    bypass_cache: bool = False  # `X-Thrifty-Cache: bypass`, a tier's `cache: false` or policy
    embedding: np.ndarray | None = None  # computed once, shared by semantic cache and router
    router_score: float | None = None
    router_cluster: int = -1  # the router's topic cluster (-1: none), for the quality loop's verdicts
    cache_result: str = "miss"  # "miss" | "exact" | "semantic" | "bypass"
    # the outcome (read by the finish step)
    started: float = 0.0  # time.monotonic() on arrival
    status: int = 200
    outcome: str = "ok"  # "ok" | "client_error" | "upstream_error" | "timeout" | "shed" | "cancelled"
    answered: bool = False  # a reply (cached or relayed) was handed to the client
    usage: Usage | None = None
    replica: str = ""  # the replica URL that answered
    ttft: float | None = None  # seconds to the first streamed event
    admission_wait: float = 0.0  # seconds spent queued in admission for a replica
    # the quality loop (proxy/quality): ledger group, shadow draw, the answer to judge, its dollars
    group: str = ""  # "control" | "treated" | "" (not in the savings ledger)
    shadow: bool = False  # sampled for a shadow call to the reference tier
    answer_body: dict[str, Any] | None = None  # the complete answer, kept only when shadowed
    dollars: float = 0.0
    baseline_dollars: float = 0.0

    @property
    def validated(self) -> bool:
        return bool(self.requested_tier)
