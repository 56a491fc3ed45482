"""The seam between the data plane and the cost levers (caches, router).

The sidecar builds one `RequestContext` per request and hands it to a `Levers`
implementation at three points: before routing (cache lookup), to choose a tier,
and after a complete answer (cache store). The data plane runs with `NoLevers`;
the caches and the router plug in without touching the relay code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True)
class RequestContext:
    """Everything the steps of the request path learn about one request."""

    request_id: str
    endpoint: str  # "chat" | "completions" | "embeddings"
    body: dict[str, Any]  # the parsed, validated OpenAI request body
    model_alias: str  # the model name the client sent
    tenant: str  # from the API key (hashed) or `X-Thrifty-Tenant`; never logged raw
    stream: bool
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased request headers
    requested_tier: str = ""  # the tier the alias maps to (the client's intent)
    tier: str = ""  # the tier that answers (after routing)
    bypass_cache: bool = False  # `X-Thrifty-Cache: bypass` or per-tier switch
    embedding: np.ndarray | None = None  # computed once, shared by semantic cache and router
    router_score: float | None = None
    cache_result: str = "miss"  # "miss" | "exact" | "semantic" | "bypass"


@dataclass(slots=True)
class CachedAnswer:
    """A complete non-streaming OpenAI response body, replayable as SSE when needed."""

    body: dict[str, Any]
    kind: str  # "exact" | "semantic"


class Levers(Protocol):
    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        """Return a cached answer or None; must never raise (a failure is a miss)."""

    async def route(self, ctx: RequestContext, tiers: list[str]) -> str:
        """Pick the tier (from `tiers`, cheapest first) that answers `ctx`."""

    async def store(self, ctx: RequestContext, response_body: dict[str, Any]) -> None:
        """Remember a complete answer; must never raise."""


class NoLevers:
    """No caches, no routing: the alias's own tier answers."""

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        return None

    async def route(self, ctx: RequestContext, tiers: list[str]) -> str:
        return ctx.requested_tier

    async def store(self, ctx: RequestContext, response_body: dict[str, Any]) -> None:
        return None
