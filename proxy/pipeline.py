"""The request path of the hot endpoints (chat, completions, embeddings), read top to bottom.

`Pipeline.handle` runs these steps in order, each a method below, all sharing one
`RequestContext`:

1. `read_and_validate`: method, content type, size, the OpenAI request shape, model ->
   tier, and the tenant (hashed API key or `X-Thrifty-Tenant`)
2. `lookup`: the levers' caches; a hit is answered at once (as SSE when streaming)
3. `route`: the levers pick the cheapest tier they trust, never above the one asked for
4. `relay`: balancer + admission pick a replica and the answer is relayed (`Relay`,
   which retries on another replica before the first byte); a 5xx from a cheaper tier
   escalates once to the tier asked for
5. `store`: a complete answer goes back to the levers' caches
6. `finish`: request metrics, dollars and savings, one access-log line, whatever happened
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import TYPE_CHECKING, Any

from thrifty.config import Config, Tier
from thrifty.proxy.balance.lanes import BATCH, PRIORITY, lane_of
from thrifty.proxy.batch.pacing import InteractivePressure
from thrifty.proxy.http.conform import ORIGIN_KEY, cached_answer
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.http.messages import FrontRequest, Reply, StreamReply, error_reply, json_reply
from thrifty.proxy.http.sse import answer_as_sse
from thrifty.proxy.levers.protocol import CachedAnswer, Levers
from thrifty.proxy.observe.accounting import CostModel, Usage
from thrifty.proxy.observe.logs import AccessLog
from thrifty.proxy.observe.metrics import SidecarMetrics, TierMetrics
from thrifty.proxy.quality.ledger import GROUP_HEADER
from thrifty.proxy.relay import SSE_HEADERS, ClientGone, Relay
from thrifty.proxy.request.context import CACHE_HEADER, TIER_HEADER, RequestContext
from thrifty.proxy.request.tenant import client_address, tenant_of
from thrifty.proxy.request.validate import DEFAULT_MAX_TOKENS_LIMIT, ENDPOINTS, check_content_type, parse_body, request_id_of, validate, wants_usage

if TYPE_CHECKING:
    from thrifty.proxy.quality.shadow import QualityLoop

_REFERENCE_USAGE = Usage(input=1000, output=200)  # to order tiers by price on one scale
_NOT_FOR_LEVERS = ("authorization", "cookie")  # request headers the levers never see


_POOLING_FLAGS = {("--runner", "pooling"), ("--task", "embed"), ("--task", "embedding"), ("--convert", "embed")}


def serves_embeddings(tier: Tier) -> bool:
    """vLLM tiers started as pooling models serve `/v1/embeddings`; external tiers are asked
    (their engine answers); the simulator and generative vLLM tiers do not."""
    eng = tier.engine
    if eng.kind == "external":
        return True
    if eng.kind != "vllm":
        return False
    args = [a for arg in eng.extra_args for a in arg.split("=", 1)]
    return any((a, b) in _POOLING_FLAGS for a, b in zip(args, args[1:]))


class Pipeline:
    """One request, step by step; the state shared between requests lives in `Sidecar` (app.py)."""

    def __init__(self, config: Config, *, levers: Levers, relay: Relay, metrics: SidecarMetrics, costs: CostModel,
                 access_log: AccessLog, max_body_bytes: int) -> None:
        self.levers = levers
        self.relay_to_replica = relay
        self.metrics = metrics
        self.costs = costs
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self.escalate_on_error = config.router.escalate_on_error
        self.tenancy = config.cache.tenancy
        self.tiers: dict[str, Tier] = {t.name: t for t in config.tiers}
        self.tier_by_model: dict[str, Tier] = {name: t for t in config.tiers for name in t.served_names}
        self.max_tokens_limit = {t.name: t.engine.max_model_len or DEFAULT_MAX_TOKENS_LIMIT for t in config.tiers}
        price = {t.name: costs.dollars(t, _REFERENCE_USAGE) for t in config.tiers}
        cheapest_first = sorted(self.tiers, key=lambda n: price[n])
        # The tiers a request may be routed to: its own and every cheaper one, cheapest first.
        self.route_candidates = {name: [t for t in cheapest_first if price[t] <= price[name]] for name in self.tiers}
        self.embedding_tiers = [t.name for t in config.tiers if serves_embeddings(t)]
        self.interactive = InteractivePressure(config.slo.ttft_p95_ms / 1000)  # paces the Batch API's runner
        self.quality: QualityLoop | None = None  # set by the sidecar when `quality.enabled`
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()

    async def handle(self, request: FrontRequest) -> Reply | StreamReply:
        rid = request_id_of(request.headers.get("x-request-id")) or f"{self._id_prefix}-{next(self._ids)}"
        ctx = RequestContext(request_id=rid, endpoint=ENDPOINTS[request.path], started=time.monotonic())
        try:
            raw = await self.read_and_validate(request, ctx)
            reply = await self.answer(request, ctx, raw)
            ctx.answered = True
            ctx.status = reply.status
            if reply.status >= 400:
                ctx.outcome = "client_error" if reply.status < 500 else "upstream_error"
            elif reply.thrifty_error is not None:  # the replica failed mid-stream
                ctx.outcome = reply.thrifty_error.outcome
            return reply
        except ApiError as exc:
            ctx.outcome, ctx.status = exc.outcome, exc.status
            return error_reply(exc, rid)
        except ClientGone:
            ctx.outcome, ctx.status = "cancelled", 499
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            ctx.outcome, ctx.status = "cancelled", 499
            raise
        except Exception:  # a bug in the request path: the front answers 500; count it as one
            ctx.outcome, ctx.status = "internal_error", 500
            raise
        finally:
            self.finish(ctx, request.headers.get("authorization", ""))

    async def answer(self, request: FrontRequest, ctx: RequestContext, raw: bytes) -> Reply | StreamReply:
        """Steps 2-5 for a validated request: from the cache, or from a replica of the routed tier."""
        quality = self.quality
        if quality is not None and quality.draw_control(ctx):
            return await self.serve_control(request, ctx, raw)
        hit = await self.levers.lookup(ctx)
        if hit is not None:
            if quality is not None:
                quality.consider(ctx)
                if ctx.shadow:
                    ctx.answer_body = hit.body
            return await self.serve_cached(request, ctx, hit)
        await self.route(ctx)
        if quality is not None:
            quality.consider(ctx)
        reply = await self.relay(request, ctx, raw)
        if ctx.shadow and isinstance(reply, Reply) and isinstance(reply.thrifty_body, dict):
            ctx.answer_body = reply.thrifty_body
        await self.store(ctx, reply)
        return reply

    async def serve_control(self, request: FrontRequest, ctx: RequestContext, raw: bytes) -> Reply | StreamReply:
        """The savings ledger's control group (proxy/quality/ledger.py): the baseline path, no cache, no routing."""
        ctx.bypass_cache, ctx.cache_result = True, "bypass"
        reply = await self.relay(request, ctx, raw)
        if isinstance(reply, Reply):
            reply.headers[GROUP_HEADER] = "control"
        return reply

    # --- 1. read + validate + tenant ------------------------------------------------------
    async def read_and_validate(self, request: FrontRequest, ctx: RequestContext) -> bytes:
        """The raw body of a valid request for a served model; fills in the request on `ctx`."""
        if request.method != "POST":
            raise ApiError(405, f"{request.path} takes POST, not {request.method}")
        check_content_type(request.content_type)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise ApiError(413, f"request body is {request.content_length} bytes; the limit is {self.max_body_bytes}")
        raw = await request.read()
        body = parse_body(raw)
        model = body.get("model")
        tier = self.tier_by_model.get(model) if isinstance(model, str) else None
        limit = self.max_tokens_limit[tier.name] if tier else DEFAULT_MAX_TOKENS_LIMIT
        parsed = validate(ctx.endpoint, body, max_tokens_limit=limit)
        if tier is None:
            raise ApiError(404, f"The model `{parsed.model}` does not exist. Served models: {', '.join(sorted(self.tier_by_model))}",
                           param="model", code="model_not_found")
        h = request.headers
        ctx.tenant = request.tenant or tenant_of(h.get("authorization"), h.get("x-thrifty-tenant"), client_address(request),
                                                 self.tenancy)
        ctx.body, ctx.model_alias, ctx.stream = body, parsed.model, parsed.stream
        ctx.lane = request.lane or lane_of(body)
        ctx.headers = {k: v for k, v in h.items() if k not in _NOT_FOR_LEVERS}
        ctx.tier = ctx.requested_tier = tier.name  # last: from here on the request counts against its tier
        return raw

    # --- 2. cache hit ---------------------------------------------------------------------
    async def serve_cached(self, request: FrontRequest, ctx: RequestContext, hit: CachedAnswer) -> Reply | StreamReply:
        ctx.cache_result = hit.kind
        ctx.usage = Usage.from_body(hit.body.get("usage"))
        # The header names the tier whose answer this is (stored with it), not the tier asked for.
        origin = hit.body.get(ORIGIN_KEY)
        headers = {"X-Request-Id": ctx.request_id, CACHE_HEADER: hit.kind,
                   TIER_HEADER: origin if isinstance(origin, str) and origin in self.tiers else ctx.tier}
        body = cached_answer(hit.body, ctx.endpoint, ctx.model_alias)
        if not ctx.stream:
            return json_reply(body, headers=headers)
        out = StreamReply({**SSE_HEADERS, **headers})
        await out.prepare(request)
        for event in answer_as_sse(body, include_usage=wants_usage(ctx.body)):
            await out.write(event)
        await out.write_eof()
        ctx.ttft = 0.0
        return out

    # --- 3. route -------------------------------------------------------------------------
    async def route(self, ctx: RequestContext) -> None:
        """Sets `ctx.tier`; embeddings go to the tier asked for when it serves them, else to the one
        tier configured to (never a cheaper stand-in chosen by the router: a vector space is not interchangeable)."""
        if ctx.endpoint == "embeddings":
            if self.tiers[ctx.requested_tier].name in self.embedding_tiers:
                return
            if not self.embedding_tiers:
                raise ApiError(404, f"The model `{ctx.model_alias}` does not serve embeddings and no tier is configured "
                               "to (a tier serves them when its engine runs with `--runner pooling`)",
                               param="model", code="model_not_found")
            ctx.tier = self.embedding_tiers[0]
            return
        if ctx.endpoint == "responses" and self._pin_conversation(ctx):
            return
        if ctx.lane == PRIORITY:
            return  # a priority request is answered by the tier it asked for, never a cheaper one
        chosen = await self.levers.route(ctx, self.route_candidates[ctx.requested_tier])
        ctx.tier = chosen if chosen in self.tiers else ctx.requested_tier

    def _pin_conversation(self, ctx: RequestContext) -> bool:
        """A Responses follow-up goes to the replica holding `previous_response_id` (True), whatever
        the router would pick; a known conversation whose replica is gone is a clear 404."""
        previous = ctx.body.get("previous_response_id")
        home = self.relay_to_replica.conversations.home(previous) if isinstance(previous, str) else None
        if home is None:
            return False
        tier, url = home
        if not any(r.url == url and r.healthy for r in self.relay_to_replica.pool.tiers.get(tier, ())):
            raise ApiError(404, f"Response with id '{previous}' is no longer available: the replica that held it "
                                "is gone; start a new conversation", param="previous_response_id",
                           code="previous_response_not_found")
        ctx.tier, ctx.pinned_replica = tier, url
        return True

    # --- 4. relay, with escalation --------------------------------------------------------
    async def relay(self, request: FrontRequest, ctx: RequestContext, raw: bytes) -> Reply | StreamReply:
        keep_body = self.levers.stores_answers or ctx.shadow
        try:
            return await self.relay_to_replica.send(request, ctx, raw, keep_body=keep_body)
        except ApiError as exc:
            if not (exc.status >= 500 and ctx.tier != ctx.requested_tier and self.escalate_on_error and not ctx.pinned_replica):
                raise
            self.metrics.escalations.labels(ctx.tier, ctx.requested_tier).inc()
            ctx.tier = ctx.requested_tier
            return await self.relay_to_replica.send(request, ctx, raw, keep_body=keep_body)

    # --- 5. store -------------------------------------------------------------------------
    async def store(self, ctx: RequestContext, reply: Reply | StreamReply) -> None:
        """A complete, accounted non-streaming answer goes to the levers (which decide whether to keep it)."""
        if isinstance(reply, Reply) and reply.status == 200 and reply.thrifty_body is not None and ctx.usage is not None:
            await self.levers.store(ctx, {**reply.thrifty_body, ORIGIN_KEY: ctx.tier})

    # --- 6. finish: metrics, dollars, access log ------------------------------------------
    def finish(self, ctx: RequestContext, authorization: str = "") -> None:
        elapsed = time.monotonic() - ctx.started
        if not ctx.answered:  # failed or cancelled: counted against the tier asked for, nothing served
            ctx.tier, ctx.cache_result, ctx.usage, ctx.replica, ctx.ttft = ctx.requested_tier or "none", "miss", None, "", None
        tier, cache, usage = ctx.tier, ctx.cache_result, ctx.usage
        if not ctx.validated or tier not in self.tiers:
            self.metrics.requests.labels("none", ctx.outcome, cache).inc()
        else:
            tm = self.metrics.tier(tier)
            self.metrics.lane_requests.labels(ctx.lane, ctx.outcome).inc()
            # Batch lines are deferrable work: their waits and sheds are not interactive latency, so
            # they stay out of the request counts and latency histograms the SLO (and the autoscaler)
            # read; their tokens and dollars are real work and are accounted below.
            if ctx.lane != BATCH:
                self.metrics.requests.labels(tier, ctx.outcome, cache).inc()
                tm.duration.observe(elapsed)
                if ctx.outcome == "ok":
                    tm.ttft.observe(ctx.ttft if ctx.ttft is not None else elapsed)
                self.interactive.observe(ctx.ttft if ctx.ttft is not None else elapsed, ctx.admission_wait > 0)
            if usage is not None:
                self._account(ctx, tm, usage)
        if self.quality is not None:
            self.quality.finished(ctx, authorization)
        if not self.access_log.enabled:
            return
        fields: dict[str, Any] = {"msg": "request", "request_id": ctx.request_id, "endpoint": ctx.endpoint,
                                  "status": ctx.status, "outcome": ctx.outcome, "cache": cache, "tier": tier,
                                  "duration_ms": round(elapsed * 1000, 2)}
        if ctx.validated:
            fields["model"] = ctx.model_alias[:100]
            fields["tenant"] = ctx.tenant
            fields["stream"] = ctx.stream
            fields["lane"] = ctx.lane
            if ctx.group:
                fields["group"] = ctx.group
        if ctx.replica:
            fields["replica"] = ctx.replica
        if usage is not None:
            fields["tokens_in"], fields["tokens_out"] = usage.input, usage.output
        self.access_log.write(fields)

    def _account(self, ctx: RequestContext, tm: TierMetrics, usage: Usage) -> None:
        tier, cache = ctx.tier, ctx.cache_result
        hit = cache in ("exact", "semantic")
        if not hit:
            self.costs.record_throughput(tier, usage)
        tm.tokens_input.inc(usage.input)
        tm.tokens_output.inc(usage.output)
        if usage.cached:
            tm.tokens_cached.inc(usage.cached)
        actual, baseline = self.costs.cost(tier, usage, hit)
        ctx.dollars, ctx.baseline_dollars = actual, baseline
        tm.cost.inc(actual)
        tm.baseline_cost.inc(baseline)
        if hit:
            tm.cache_baseline_cost.inc(baseline)
        saved = baseline - actual
        if saved > 0:
            lever = "cache_" + cache if hit else ("routing" if tier != self.costs.baseline.name else "")
            if lever:
                self.metrics.savings.labels(lever).inc(saved)
