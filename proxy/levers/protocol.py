"""The seam between the data plane and the cost levers (caches, router).

The pipeline hands each request's `RequestContext` to a `Levers` implementation at
three points: before routing (cache lookup, which also decides whether the request
may use the cache at all), to choose a tier, and after a complete answer (cache
store). The data plane runs with `NoLevers`; the caches and the router plug in without
touching the relay code, and the pipeline never asks which implementation it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.proxy.request.context import RequestContext

__all__ = ["CachedAnswer", "Levers", "NoLevers", "RequestContext"]


@dataclass(slots=True)
class CachedAnswer:
    """A complete non-streaming OpenAI response body, replayable as SSE when needed."""

    body: dict[str, Any]
    kind: str  # "exact" | "semantic"


class Levers(Protocol):
    @property
    def stores_answers(self) -> bool:
        """True when `store` may keep answers, so the relay parses complete answer bodies for it."""

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        """A cached answer or None; must never raise (a failure is a miss).

        Owns the cache policy: when caching is switched off for this request (bypass
        header, the tier's `cache: false`, policy `cache_enabled: false`) it sets
        `ctx.cache_result = "bypass"` and returns None."""

    async def route(self, ctx: RequestContext, tiers: list[str]) -> str:
        """Pick the tier (from `tiers`, cheapest first) that answers `ctx`."""

    async def store(self, ctx: RequestContext, response_body: dict[str, Any]) -> None:
        """Remember a complete answer; must never raise."""

    def apply_policy(self, policy: dict[str, Any]) -> None:
        """Controller-pushed policy (`router_threshold`, `cache_enabled`); unknown keys are ignored."""


class NoLevers:
    """No caches, no routing: the alias's own tier answers."""

    stores_answers = False

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        return None

    async def route(self, ctx: RequestContext, tiers: list[str]) -> str:
        return ctx.requested_tier

    async def store(self, ctx: RequestContext, response_body: dict[str, Any]) -> None:
        return None

    def apply_policy(self, policy: dict[str, Any]) -> None:
        return None
