"""`CostLevers`: the exact cache, the semantic cache and the router behind the `Levers` seam.

Order per request (the sidecar calls these): `lookup` (exact, then embed once, then
semantic), `route` (reuses that embedding), and after a complete upstream answer
`store`. Every decision is counted on the sidecar's own `CollectorRegistry`
(docs/metrics.md). Safety rules, each tested:

- caches are partitioned by tenant (the exact key and the semantic partition both
  hash the tenant), and a semantic candidate from another partition is rejected
  even if an index returned it;
- `X-Thrifty-Cache: bypass`, `ctx.bypass_cache`, a tier's `cache: false`, or policy
  `cache_enabled: false` skip both reading and writing;
- any failure inside a cache or the embedder is counted as `result="error"` and
  becomes a miss — a request never fails because of a lever;
- a request with no tenant (`ANONYMOUS`: no API key, `cache.tenancy.anonymous:
  no_cache`) neither reads nor writes either cache;
- sampled requests (temperature > 0, no seed) skip the semantic cache too, unless the
  tier they asked for is in `cache.semantic.sampled_tiers`;
- a forced `X-Thrifty-Tier` is part of the exact key and the semantic partition, so an
  answer obtained with it is never served to a plain request (or vice versa).

Routing never goes above the tier the client asked for; `X-Thrifty-Tier: NAME`
forces a tier. Escalation after an upstream error is the sidecar's job.

These levers own the cache policy: the sidecar asks `lookup` for every request and
learns from `ctx.cache_result == "bypass"` that caching was off for it. The sidecar owns
the dollar accounting (`thrifty_savings_dollars_total` by lever, from `ctx.cache_result`
and `ctx.tier`), the escalation counter and the SSE replay of a hit.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from thrifty.config import Config, ConfigError
from thrifty.proxy.levers.embedder import Embedder, MiniLMEncoder
from thrifty.proxy.levers.exact_cache import ExactCache, is_deterministic, request_key
from thrifty.proxy.levers.protocol import CachedAnswer
from thrifty.proxy.levers.router import RouterModel, hard_prompt, pick_tier, router_view
from thrifty.proxy.levers.semantic_cache import PairVerifier, SemanticCache, partition_key
from thrifty.proxy.levers.verifier import Verifier
from thrifty.proxy.request.context import CACHE_HEADER, TIER_HEADER, RequestContext
from thrifty.proxy.request.prefix import bounded_view
from thrifty.proxy.request.responses import last_user_turn
from thrifty.proxy.request.tenant import ANONYMOUS

__all__ = ["CostLevers", "LeverMetrics", "query_text", "semantic_context"]

log = logging.getLogger(__name__)

_TIER_KEY = TIER_HEADER.lower()  # `ctx.headers` has lower-cased names
_CACHE_KEY = CACHE_HEADER.lower()
_NOT_CONTEXT = frozenset({"messages", "prompt", "stream", "stream_options", "user"})
_STORABLE_FINISH = frozenset({"stop", "length", "tool_calls", "function_call"})  # same max_tokens is in the key


class LeverMetrics:
    """The levers' Prometheus series, on the registry the sidecar passes in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cache_lookups = Counter("thrifty_cache_lookups_total", "Cache decisions", ["kind", "result"], registry=registry)
        self.cache_bytes = Gauge("thrifty_cache_bytes", "Bytes held by each cache", ["kind"], registry=registry)
        self.cache_entries = Gauge("thrifty_cache_entries", "Entries held by each cache", ["kind"], registry=registry)
        self.router_decisions = Counter("thrifty_router_decisions_total", "Routing decisions by tier and reason", ["tier", "reason"], registry=registry)
        self.router_score = Histogram(
            "thrifty_router_score",
            "Router's predicted chance the cheaper tier is good enough",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=registry,
        )
        self.embed_seconds = Histogram(
            "thrifty_embed_seconds",
            "Time to embed one request",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
            registry=registry,
        )


def query_text(ctx: RequestContext) -> str | None:
    """The question a semantic hit must match: the last user turn, or the prompt, as a
    bounded view (`bounded_view`: a long prompt costs the embedder what an 8 KB one does)."""
    text = _question(ctx)
    return bounded_view(text) if text is not None else None


def _question(ctx: RequestContext) -> str | None:
    if ctx.endpoint == "chat":
        messages = ctx.body.get("messages") or []
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            return None  # a tool result or assistant prefill: answers depend on more than words
        content = messages[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                return None  # images, or parts this sidecar does not read: no
            return "\n".join(parts)  # type: ignore[arg-type]
        return None
    if ctx.endpoint == "responses":
        return last_user_turn(ctx.body)
    if ctx.endpoint == "completions":
        prompt = ctx.body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else None
    return None


def forced_tier(ctx: RequestContext, tiers: Sequence[str]) -> str:
    """The tier `X-Thrifty-Tier` forces ("" when absent or not a tier: then it changes nothing)."""
    forced = ctx.headers.get(_TIER_KEY, "").strip()
    return forced if forced in tiers else ""


def semantic_context(ctx: RequestContext, forced: str = "") -> dict[str, Any]:
    """Everything but the last question: system prompt, earlier turns, tools, parameters
    (and the forced tier, when there is one)."""
    context = {k: v for k, v in ctx.body.items() if k not in _NOT_CONTEXT}
    context["endpoint"] = ctx.endpoint
    if forced:
        context["forced_tier"] = forced
    if ctx.endpoint == "chat":
        context["earlier_turns"] = (ctx.body.get("messages") or [])[:-1]
    return context


class CostLevers:
    """Caches + router from `Config`; implements `thrifty.proxy.levers.protocol.Levers`."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        *,
        embedder: Embedder | None = None,
        router_model: RouterModel | None = None,
        verifier: PairVerifier | None = None,
    ) -> None:
        self.config = config
        self.metrics = LeverMetrics(registry)
        self._tier_cache = {t.name: t.cache for t in config.tiers}
        self._tier_names = [t.name for t in config.tiers]
        self._sampled_semantic = frozenset(config.cache.semantic.sampled_tiers)
        self.cache_enabled = True
        exact = config.cache.exact
        semantic = config.cache.semantic
        # cache.shared: a Redis tier behind both caches (docs/design/shared-cache.md)
        # (imported only then: the `redis` client is needed only with a shared tier)
        self.shared: Any = None
        self.exact: ExactCache | None = None
        if config.cache.shared:
            from thrifty.proxy.levers.shared.metrics import SharedMetrics
            from thrifty.proxy.levers.shared.redis_exact import SharedExactCache
            from thrifty.proxy.levers.shared.tier import SharedTier

            self.shared = SharedTier(config.cache.shared, SharedMetrics(registry))
            self.exact = SharedExactCache(exact.max_bytes, exact.ttl_s, self.shared) if exact.enabled else None
        elif exact.enabled:
            self.exact = ExactCache(exact.max_bytes, exact.ttl_s)
        self.router_model = router_model
        if config.router.enabled and router_model is None:
            self.router_model = RouterModel.load(config.router.artifact) if config.router.artifact else RouterModel.load()
        self.default_threshold = config.router.threshold if config.router.threshold is not None else (self.router_model.threshold if self.router_model else 0.5)
        self.router_threshold = self.default_threshold
        self.cluster_thresholds: dict[int, float] = {}  # controller-pushed, per router topic cluster
        needs_vectors = semantic.enabled or (config.router.enabled and self.router_model is not None)
        if embedder is None and needs_vectors:
            embedder = Embedder(MiniLMEncoder(), observe_seconds=self.metrics.embed_seconds.observe)
        self.embedder = embedder
        if self.router_model is not None and embedder is not None and self.router_model.embedder != embedder.encoder.name:
            raise ConfigError(f"router artifact was trained on {self.router_model.embedder} embeddings, the sidecar embeds with {embedder.encoder.name}")
        self.semantic: SemanticCache | None = None
        if semantic.enabled and embedder is not None:
            if verifier is None:
                verifier = Verifier.load()
            verifier = verifier.for_encoder(embedder.encoder.name) if isinstance(verifier, Verifier) else verifier
            floor = getattr(verifier, "similarity_floor", 0.8)
            if semantic.threshold is not None:
                floor = semantic.threshold
            options = dict(max_bytes=semantic.max_bytes, ttl_s=semantic.ttl_s, similarity_floor=floor, verifier=verifier)
            if self.shared is not None:
                from thrifty.proxy.levers.shared.redis_mirror import SharedSemanticCache

                self.semantic = SharedSemanticCache(embedder.dim, tier=self.shared, **options)
            else:
                self.semantic = SemanticCache(embedder.dim, **options)
        self._publish_sizes()

    @property
    def stores_answers(self) -> bool:
        return self.exact is not None or self.semantic is not None

    # ------------------------------------------------------------------ policy

    def apply_policy(self, policy: dict[str, Any]) -> None:
        """Controller-pushed policy: `router_threshold` (float, or None for the default),
        `router_cluster_thresholds` ({cluster: float}), `cache_enabled`."""
        if "router_threshold" in policy:
            value = policy["router_threshold"]
            self.router_threshold = self.default_threshold if value is None else min(max(float(value), 0.0), 1.0)
        if "router_cluster_thresholds" in policy:  # per topic cluster; the others use router_threshold
            clusters = policy["router_cluster_thresholds"] or {}
            self.cluster_thresholds = {int(c): min(max(float(v), 0.0), 1.0) for c, v in clusters.items()}
        if "cache_enabled" in policy and policy["cache_enabled"] is not None:
            self.cache_enabled = bool(policy["cache_enabled"])

    def _caching_allowed(self, ctx: RequestContext, tier: str) -> bool:
        if ctx.bypass_cache or ctx.tenant == ANONYMOUS or ctx.headers.get(_CACHE_KEY, "").strip().lower() == "bypass":
            return False
        return self.cache_enabled and self._tier_cache.get(tier, True)

    # ------------------------------------------------------------------ lookup

    async def lookup(self, ctx: RequestContext) -> CachedAnswer | None:
        if not self._caching_allowed(ctx, ctx.requested_tier):  # switched off: not a lookup, not counted
            ctx.bypass_cache = True
            ctx.cache_result = "bypass"
            return None
        if ctx.endpoint not in ("chat", "completions"):
            return None
        if self.shared is not None and self.semantic is not None:
            self.semantic.ensure_started()  # type: ignore[attr-defined]  # the mirror's consumer
        answer = self._lookup_exact(ctx)
        if answer is None and self.shared is not None and self.exact is not None:
            answer = await self._lookup_shared_exact(ctx)
        if answer is None:
            answer = await self._lookup_semantic(ctx)
        if answer is not None:
            ctx.cache_result = answer.kind
        return answer

    def _lookup_exact(self, ctx: RequestContext) -> CachedAnswer | None:
        if self.exact is None or (self.config.cache.exact.deterministic_only and not is_deterministic(ctx.body)):
            self.metrics.cache_lookups.labels("exact", "skipped").inc()
            return None
        try:
            body = self.exact.get(request_key(ctx.tenant, ctx.endpoint, ctx.body, forced_tier(ctx, self._tier_names)))
        except Exception:
            log.exception("exact cache lookup failed; treating as a miss")
            self.metrics.cache_lookups.labels("exact", "error").inc()
            return None
        self.metrics.cache_lookups.labels("exact", "hit" if body is not None else "miss").inc()
        return CachedAnswer(body=copy.deepcopy(body), kind="exact") if body is not None else None

    async def _lookup_shared_exact(self, ctx: RequestContext) -> CachedAnswer | None:
        """A local exact miss asks the shared tier (bounded by its timeout and breaker)."""
        if self.config.cache.exact.deterministic_only and not is_deterministic(ctx.body):
            return None
        try:
            key = request_key(ctx.tenant, ctx.endpoint, ctx.body, forced_tier(ctx, self._tier_names))
            body = await self.exact.fetch(ctx.tenant, key)  # type: ignore[union-attr]
        except Exception:
            log.exception("shared exact lookup failed; treating as a miss")
            return None
        return CachedAnswer(body=body, kind="exact") if body is not None else None

    async def _ensure_embedding(self, ctx: RequestContext) -> np.ndarray | None:
        if ctx.embedding is None and self.embedder is not None:
            text = query_text(ctx)
            if text is not None:
                ctx.embedding = await self.embedder.embed(text)
        return ctx.embedding

    async def _router_embedding(self, ctx: RequestContext, text: str | None) -> np.ndarray | None:
        """The router's vector: the request's own embedding unless the prompt is long enough
        that the router reads only its tail (`router_view`), which then costs a second pass."""
        view = router_view(text) if text is not None else None
        if view is None or self.embedder is None or view == text:
            return await self._ensure_embedding(ctx)
        return await self.embedder.embed(view)

    def _semantic_allowed(self, ctx: RequestContext) -> bool:
        """Deterministic requests, or sampled ones on a tier the operator opted in."""
        return is_deterministic(ctx.body) or ctx.requested_tier in self._sampled_semantic

    async def _lookup_semantic(self, ctx: RequestContext) -> CachedAnswer | None:
        text = query_text(ctx)
        if self.semantic is None or text is None or not self._semantic_allowed(ctx):
            self.metrics.cache_lookups.labels("semantic", "skipped").inc()
            return None
        try:
            vector = await self._ensure_embedding(ctx)
            context = semantic_context(ctx, forced_tier(ctx, self._tier_names))
            hit = self.semantic.lookup(partition_key(ctx.tenant, context), text, vector)
        except Exception:
            log.exception("semantic cache lookup failed; treating as a miss")
            self.metrics.cache_lookups.labels("semantic", "error").inc()
            return None
        self.metrics.cache_lookups.labels("semantic", "hit" if hit else "miss").inc()
        return CachedAnswer(body=copy.deepcopy(hit.body), kind="semantic") if hit else None

    # ------------------------------------------------------------------ route

    async def route(self, ctx: RequestContext, tiers: list[str]) -> str:
        forced = forced_tier(ctx, tiers)
        if forced:
            return self._decide(ctx, forced, "header")
        allowed = tiers[: tiers.index(ctx.requested_tier) + 1] if ctx.requested_tier in tiers else list(tiers)
        if self.router_model is None or not self.config.router.enabled or len(allowed) < 2:
            return self._decide(ctx, ctx.requested_tier or allowed[-1], "disabled")
        text = query_text(ctx)
        if self.config.router.hard_prompts and text is not None and hard_prompt(text):
            return self._decide(ctx, allowed[-1], "hard")
        try:
            vector = await self._router_embedding(ctx, text)
            if vector is None or text is None:
                return self._decide(ctx, allowed[-1], "disabled")
            score = self.router_model.ease_score(vector, text)
        except Exception:
            log.exception("router failed; sending the request to the tier it asked for")
            return self._decide(ctx, allowed[-1], "disabled")
        ctx.router_score = score
        centroids = self.router_model.centroids
        if len(centroids):
            ctx.router_cluster = int(np.argmax(centroids @ np.asarray(vector, dtype=centroids.dtype)))
        self.metrics.router_score.observe(score)
        threshold = self.cluster_thresholds.get(ctx.router_cluster, self.router_threshold)
        return self._decide(ctx, pick_tier(score, allowed, threshold), "model")

    def _decide(self, ctx: RequestContext, tier: str, reason: str) -> str:
        ctx.tier = tier
        self.metrics.router_decisions.labels(tier, reason).inc()
        return tier

    # ------------------------------------------------------------------ store

    async def store(self, ctx: RequestContext, response_body: dict[str, Any]) -> None:
        if ctx.cache_result != "miss" or ctx.endpoint not in ("chat", "completions"):
            return
        if not self._caching_allowed(ctx, ctx.requested_tier) or not self._caching_allowed(ctx, ctx.tier or ctx.requested_tier):
            return
        choices = response_body.get("choices") or []
        if not choices or any(c.get("finish_reason") not in _STORABLE_FINISH for c in choices):
            return
        forced = forced_tier(ctx, self._tier_names)
        try:
            if self.exact is not None and (not self.config.cache.exact.deterministic_only or is_deterministic(ctx.body)):
                key = request_key(ctx.tenant, ctx.endpoint, ctx.body, forced)
                if self.shared is not None:
                    self.exact.put(key, copy.deepcopy(response_body), tenant=ctx.tenant)  # type: ignore[call-arg]
                else:
                    self.exact.put(key, copy.deepcopy(response_body))
            text = query_text(ctx)
            if self.semantic is not None and text is not None and self._semantic_allowed(ctx):
                vector = await self._ensure_embedding(ctx)
                if vector is not None:
                    self.semantic.put(partition_key(ctx.tenant, semantic_context(ctx, forced)), text, vector,
                                      copy.deepcopy(response_body))
        except Exception:
            log.exception("cache store failed; the answer is simply not cached")
        finally:
            self._publish_sizes()

    def _publish_sizes(self) -> None:
        for kind, cache in (("exact", self.exact), ("semantic", self.semantic)):
            self.metrics.cache_bytes.labels(kind).set(cache.bytes if cache else 0)
            self.metrics.cache_entries.labels(kind).set(len(cache) if cache else 0)

    async def aclose(self) -> None:
        if self.shared is not None:
            if self.semantic is not None:
                await self.semantic.aclose()  # type: ignore[attr-defined]
            await self.shared.aclose()
        if self.embedder is not None:
            await self.embedder.aclose()
