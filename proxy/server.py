"""The sidecar: the request path, one step per module, wired in order, behind its front door.

validate -> tenant -> levers.lookup (caches) -> levers.route (tier) -> balancer +
admission (replica) -> relay (retry before the first byte, escalate on failure) ->
accounting + metrics + one access-log line. `/v1/models` is answered here from the
config; any path the sidecar does not understand is forwarded unchanged to a replica.
The hot endpoints are served by the raw HTTP front (`front.py`); everything else by the
aiohttp app, which the front hands those connections to.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from typing import Any

import aiohttp
from aiohttp import web

from thrifty.config import Config, Tier
from thrifty.proxy.observe.accounting import DEFAULT_NOMINAL_TOKENS_PER_S, CostModel, Usage
from thrifty.proxy.balance.admission import Admission
from thrifty.proxy.balance.balancer import Balancer, build_balancer
from thrifty.proxy.http.errors import ApiError, upstream_error_body
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.kv_hub import KvEventHub, kv_event_sources, tier_tokenizer
from thrifty.proxy.http.front import FrontRequest, FrontServer, Reply, StreamReply, aiohttp_handler, error_reply, json_reply
from thrifty.proxy.levers.protocol import CachedAnswer, Levers, NoLevers, RequestContext
from thrifty.proxy.observe.logs import LOGGER_NAME, AccessLog
from thrifty.proxy.observe.metrics import SidecarMetrics, TierMetrics
from thrifty.proxy.balance.pool import SCRAPE_INTERVAL_S, ReplicaPool, ReplicaState, replica_urls
from thrifty.proxy.request.prefix import block_hashes, estimate_tokens, render_prompt
from thrifty.proxy.request.tokenize import tokenize_request
from thrifty.proxy.http.sse import answer_as_sse
from thrifty.proxy.relay import ClientGone, UpstreamUnavailable, find_usage, make_session, open_upstream, read_body, relay_stream
from thrifty.proxy.http.upstream import UpstreamPool, UpstreamResponse
from thrifty.proxy.request.tenant import client_address, tenant_of
from thrifty.proxy.request.validate import (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS_LIMIT, ENDPOINTS, check_content_type, parse_body,
                                            request_id_of, validate)

log = logging.getLogger(LOGGER_NAME)

SIDECAR_KEY = web.AppKey("sidecar", object)
TIER_HEADER = "X-Thrifty-Tier"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                         "transfer-encoding", "upgrade", "host", "content-length"})
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_REFERENCE_USAGE = Usage(input=1000, output=200)  # to order tiers by price on one scale


class Sidecar:
    """All per-process state of one sidecar; `build_app` exposes it as `app[SIDECAR_KEY]`."""

    def __init__(self, config: Config, *, levers: Levers | None = None,
                 replicas: dict[str, list[str]] | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 access_log: AccessLog | None = None, nominal_tokens_per_s: float = DEFAULT_NOMINAL_TOKENS_PER_S,
                 scrape_interval_s: float = SCRAPE_INTERVAL_S, max_attempts: int = 3) -> None:
        self.config = config
        self.levers: Levers = levers or NoLevers()
        self.has_levers = not isinstance(self.levers, NoLevers)
        self.max_body_bytes = max_body_bytes
        self.max_attempts = max_attempts
        self.access_log = access_log or AccessLog(enabled=False)
        urls = replica_urls(config, replicas)
        adm = config.admission
        self.pool = ReplicaPool(
            urls,
            max_inflight={t.name: t.engine.max_num_seqs + adm.saturation_waiting for t in config.tiers},
            scrape_interval_s=scrape_interval_s,
        )
        # Precise prefix routing where replicas publish KV events and the tier's tokenizer is on disk.
        self.kv_hub = KvEventHub()
        sources = kv_event_sources(config, urls, set(replicas or ()))
        self.tokenizers = {t.name: tok for t in config.tiers if t.name in sources and (tok := tier_tokenizer(t))}
        for tier_name in self.tokenizers:
            for url, (endpoint, replay) in sources[tier_name].items():
                self.kv_hub.add(tier_name, url, endpoint, replay_endpoint=replay)
        self.kv_hub.attach_pool(self.pool)
        self.balancers: dict[str, Balancer] = {
            t.name: build_balancer("precise" if t.name in self.tokenizers else "thrifty", max_waiting=adm.saturation_waiting,
                                   max_kv=adm.saturation_kv, kv_feeds=self.kv_hub.feeds)
            for t in config.tiers
        }
        self.admission = Admission([t.name for t in config.tiers], max_queue=adm.max_queue, max_wait_s=adm.max_wait_s)
        self.pool.on_change(self.admission.wake)
        self.metrics = SidecarMetrics([t.name for t in config.tiers])
        self.metrics.attach_pool(self.pool, self.admission.depths)
        self.metrics.registry.register(self.kv_hub.collector())
        self.costs = CostModel(config, nominal_tokens_per_s=nominal_tokens_per_s, replicas={t: len(u) for t, u in urls.items()})
        self.tiers: dict[str, Tier] = {t.name: t for t in config.tiers}
        self.tier_by_model: dict[str, Tier] = {name: t for t in config.tiers for name in t.served_names}
        ref = {t.name: self.costs.dollars(t, _REFERENCE_USAGE) for t in config.tiers}
        self.tier_price = ref
        self.tiers_cheapest_first = sorted(self.tiers, key=lambda n: ref[n])
        self.max_tokens_limit = {t.name: t.engine.max_model_len or DEFAULT_MAX_TOKENS_LIMIT for t in config.tiers}
        self.cache_enabled = True
        self.policy: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None  # passthrough of unknown paths only
        self.upstream = UpstreamPool(config.timeouts)  # the hot path's keep-alive connections
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()

    def set_levers(self, levers: Levers) -> None:
        self.levers = levers
        self.has_levers = not isinstance(levers, NoLevers)

    # --- lifecycle -------------------------------------------------------------------
    async def start(self, app: web.Application | None = None) -> None:
        self.session = make_session(self.config.timeouts)
        await self.pool.start()
        self.kv_hub.start()
        log.info("sidecar started", extra={"fields": {"replicas": {t: [r.url for r in rs] for t, rs in self.pool.tiers.items()}}})

    async def stop(self, app: web.Application | None = None) -> None:
        await self.kv_hub.close()
        await self.pool.close()
        self.upstream.close()
        if self.session:
            await self.session.close()

    def apply_policy(self, policy: dict[str, Any]) -> None:
        """Policy pushed by the controller; kept when the controller goes away."""
        self.policy.update(policy)
        if "cache_enabled" in policy and policy["cache_enabled"] is not None:
            self.cache_enabled = bool(policy["cache_enabled"])
        apply = getattr(self.levers, "apply_policy", None)
        if callable(apply):
            apply(policy)
        log.info("policy applied", extra={"fields": {"policy": {k: v for k, v in policy.items() if isinstance(v, (int, float, bool, str))}}})

    # --- handlers --------------------------------------------------------------------
    async def handle_api(self, request: FrontRequest) -> Reply | StreamReply:
        t0 = time.monotonic()
        rid = request_id_of(request.headers.get("x-request-id")) or f"{self._id_prefix}-{next(self._ids)}"
        endpoint = ENDPOINTS[request.path]
        tier_label, outcome, cache, status = "none", "ok", "miss", 200
        ctx: RequestContext | None = None
        usage: Usage | None = None
        replica_url = ""
        ttft: float | None = None
        try:
            if request.method != "POST":
                raise ApiError(405, f"{request.path} takes POST, not {request.method}")
            check_content_type(request.content_type)
            raw = await self._read(request)
            body = parse_body(raw)
            model = body.get("model")
            tier = self.tier_by_model.get(model) if isinstance(model, str) else None
            parsed = validate(endpoint, body, max_tokens_limit=self.max_tokens_limit[tier.name] if tier else DEFAULT_MAX_TOKENS_LIMIT)
            if tier is None:
                raise ApiError(404, f"The model `{parsed.model}` does not exist. Served models: {', '.join(sorted(self.tier_by_model))}",
                               param="model", code="model_not_found")
            h = request.headers
            ctx = RequestContext(request_id=rid, endpoint=endpoint, body=body, model_alias=parsed.model,
                                 tenant=tenant_of(h.get("authorization"), h.get("x-thrifty-tenant"), client_address(request), self.config.cache.tenancy), stream=parsed.stream,
                                 requested_tier=tier.name, tier=tier.name)
            if self.has_levers:
                ctx.headers = {k: v for k, v in h.items() if k not in ("authorization", "cookie")}
            tier_label = tier.name
            response, usage, replica_url, ttft, cache = await self._answer(request, ctx, raw)
            tier_label = ctx.tier
            status = response.status
            if status >= 400:
                outcome = "client_error" if status < 500 else "upstream_error"
            elif response.thrifty_error is not None:
                outcome = response.thrifty_error.outcome
            return response
        except ApiError as exc:
            outcome, status = exc.outcome, exc.status
            return error_reply(exc, rid)
        except ClientGone:
            outcome, status = "cancelled", 499
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            outcome, status = "cancelled", 499
            raise
        except Exception:  # a bug in the request path: the front answers 500; count it as one
            outcome, status = "internal_error", 500
            raise
        finally:
            self._finish(t0, rid, endpoint, ctx, tier_label, outcome, cache, status, usage, replica_url, ttft)

    async def _read(self, request: FrontRequest) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise ApiError(413, f"request body is {request.content_length} bytes; the limit is {self.max_body_bytes}")
        return await request.read()

    async def _answer(self, request: FrontRequest, ctx: RequestContext, raw: bytes
                      ) -> tuple[Reply | StreamReply, Usage | None, str, float | None, str]:
        """(response, usage, replica url, ttft, cache result) for a validated request."""
        tier = self.tiers[ctx.requested_tier]
        cache_on = self.cache_enabled and tier.cache and not ctx.bypass_cache
        if self.has_levers:
            if request.headers.get("x-thrifty-cache", "").lower() == "bypass":
                ctx.bypass_cache, cache_on = True, False
            if cache_on and ctx.endpoint != "embeddings":
                hit = await self.levers.lookup(ctx)
                if hit is not None:
                    ctx.cache_result = hit.kind
                    return await self._serve_cached(request, ctx, hit)
            elif not cache_on:
                ctx.cache_result = "bypass"
            if ctx.endpoint != "embeddings":
                limit = self.tier_price[tier.name]
                candidates = [t for t in self.tiers_cheapest_first if self.tier_price[t] <= limit]
                chosen = await self.levers.route(ctx, candidates)
                ctx.tier = chosen if chosen in self.tiers else tier.name
        try:
            response, usage, url, ttft = await self._relay(request, ctx, raw)
        except ApiError as exc:
            if not (exc.status >= 500 and ctx.tier != ctx.requested_tier and self.config.router.escalate_on_error):
                raise
            self.metrics.escalations.labels(ctx.tier, ctx.requested_tier).inc()
            ctx.tier = ctx.requested_tier
            response, usage, url, ttft = await self._relay(request, ctx, raw)
        if self.has_levers and cache_on and usage is not None and response.status == 200 and not ctx.stream:
            answer = response.thrifty_body if isinstance(response, Reply) else None
            if answer is not None:
                await self.levers.store(ctx, answer)
        return response, usage, url, ttft, ctx.cache_result

    def _upstream_body(self, ctx: RequestContext, raw: bytes) -> tuple[bytes, bool]:
        """The body to send (re-serialised only when it must change) and whether to strip usage."""
        body = ctx.body
        changes: dict[str, Any] = {}
        if ctx.tier != ctx.requested_tier:
            changes["model"] = self.tiers[ctx.tier].model
        strip_usage = False
        if ctx.stream:
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                changes["stream_options"] = {**(opts or {}), "include_usage": True}
                strip_usage = True
        if not changes:
            return raw, strip_usage
        if len(changes) == 1 and strip_usage and "stream_options" not in body:
            # Append the one key to the client's own bytes instead of re-encoding the body.
            end = raw.rstrip()
            if end.endswith(b"}") and not end.endswith(b"\x00}"):  # (not UTF-16 JSON)
                return end[:-1] + b',"stream_options":{"include_usage":true}}', strip_usage
        return json.dumps({**body, **changes}).encode(), strip_usage

    async def _relay(self, request: FrontRequest, ctx: RequestContext, raw: bytes
                     ) -> tuple[Reply | StreamReply, Usage | None, str, float | None]:
        tier = ctx.tier
        replicas = self.pool.tiers[tier]
        balancer = self.balancers[tier]
        body, strip_usage = self._upstream_body(ctx, raw)
        if ctx.endpoint == "embeddings":
            pick_req = PickRequest(tokens=len(raw) // 4 + 1)
        else:
            text = render_prompt(ctx.endpoint, ctx.body)
            max_out = ctx.body.get("max_tokens") or ctx.body.get("max_completion_tokens") or 256
            pick_req = PickRequest(blocks=block_hashes(text), tokens=estimate_tokens(text) + min(int(max_out), 4096))
            tokenizer = self.tokenizers.get(tier)
            if tokenizer is not None:
                pick_req.token_ids = await tokenize_request(tokenizer, ctx.endpoint, ctx.body, len(text))
        headers = {"Content-Type": "application/json", "X-Request-Id": ctx.request_id}
        auth = request.headers.get("authorization")
        if auth:
            headers["Authorization"] = auth
        tier_metrics = self.metrics.tier(tier)
        picks = self.metrics.picks
        tried: set[str] = set()
        last_error = ""
        path = request.path
        for attempt in range(self.max_attempts):
            if attempt:
                if not any(r.healthy and r.url not in tried for r in replicas):
                    break
                tier_metrics.retries.inc()
            pick_req.exclude = tried
            pick, waited = await self.admission.admit(tier, lambda: balancer.pick(pick_req, replicas),
                                                      why_not=lambda: self._why_not(replicas))
            if waited:
                tier_metrics.admission_wait.observe(waited)
            replica = pick.replica
            picks.labels(tier, replica.url, pick.reason).inc()
            replica.inflight += 1
            replica.inflight_tokens += pick_req.tokens
            sent = time.monotonic()
            resp: UpstreamResponse | None = None
            complete = False
            try:
                try:
                    resp = await open_upstream(self.upstream, replica.url, path, body, headers, self.config.timeouts)
                    if not ctx.stream or resp.status != 200:
                        data = await read_body(resp, self.config.timeouts)
                except UpstreamUnavailable as exc:
                    last_error = f"{replica.url}: {exc}"
                    if "answered 50" not in str(exc):
                        replica.mark_down()
                        self.balancer_forget(tier, replica)
                    tried.add(replica.url)
                    continue
                replica.observe_ttfb(time.monotonic() - sent)
                if not ctx.stream or resp.status != 200:
                    complete = True
                    return self._plain_response(ctx, resp, data), self._usage_of(resp.status, data), replica.url, None
                out = StreamReply({**_SSE_HEADERS, "X-Request-Id": ctx.request_id, "X-Thrifty-Tier": tier})
                await out.prepare(request)
                result = await relay_stream(resp, out, strip_usage=strip_usage, on_gap=tier_metrics.itl.observe, timeouts=self.config.timeouts)
                if result.error is not None:
                    if result.error.code == "upstream_disconnected":
                        replica.mark_down()
                    out.thrifty_error = result.error
                else:
                    complete = True
                    await out.write_eof()
                ttft = (result.first_byte_at - sent) if result.first_byte_at else None
                usage = Usage.from_body(result.usage)
                return out, usage, replica.url, ttft
            finally:
                if resp is not None:
                    # A fully read answer returns its connection to the pool; anything else
                    # (client gone, replica failed) closes it, which aborts the engine's request.
                    resp.release(self.upstream) if complete else resp.close()
                replica.inflight -= 1
                replica.inflight_tokens -= pick_req.tokens
                self.admission.wake(tier)
        raise ApiError(502, f"no replica of tier {tier!r} could be reached ({last_error})", code="upstream_unavailable",
                       outcome="upstream_error")

    def balancer_forget(self, tier: str, replica: ReplicaState) -> None:
        for scorer, _ in self.balancers[tier].scorers:
            forget = getattr(scorer, "forget", None)
            if forget:
                forget(replica.url)

    @staticmethod
    def _why_not(replicas: list[ReplicaState]) -> str:
        healthy = [r for r in replicas if r.healthy]
        if not healthy:
            return f"all {len(replicas)} replicas are down"
        return f"{len(healthy)} healthy replicas are saturated"

    def _plain_response(self, ctx: RequestContext, resp: UpstreamResponse, data: bytes) -> Reply:
        headers = {"Content-Type": resp.content_type, "X-Request-Id": ctx.request_id,
                   "X-Thrifty-Tier": ctx.tier}
        if resp.status >= 400:
            data = upstream_error_body(resp.status, data)
            headers["Content-Type"] = "application/json"
        out = Reply(resp.status, data, headers)
        if self.has_levers and resp.status == 200:
            try:
                out.thrifty_body = json.loads(data)
            except ValueError:
                pass
        return out

    @staticmethod
    def _usage_of(status: int, data: bytes) -> Usage | None:
        return Usage.from_body(find_usage(data)) if status == 200 else None

    async def _serve_cached(self, request: FrontRequest, ctx: RequestContext, hit: CachedAnswer
                            ) -> tuple[Reply | StreamReply, Usage | None, str, float | None, str]:
        usage = Usage.from_body(hit.body.get("usage"))
        headers = {"X-Request-Id": ctx.request_id, "X-Thrifty-Cache": hit.kind, "X-Thrifty-Tier": ctx.tier}
        if not ctx.stream:
            return json_reply(hit.body, headers=headers), usage, "", None, hit.kind
        out = StreamReply({**_SSE_HEADERS, **headers})
        await out.prepare(request)
        opts = ctx.body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        for event in answer_as_sse(hit.body, include_usage=include_usage):
            await out.write(event)
        await out.write_eof()
        return out, usage, "", 0.0, hit.kind

    def _finish(self, t0: float, rid: str, endpoint: str, ctx: RequestContext | None, tier: str, outcome: str,
                cache: str, status: int, usage: Usage | None, replica: str, ttft: float | None) -> None:
        elapsed = time.monotonic() - t0
        if ctx is None or tier not in self.tiers:
            self.metrics.requests.labels("none", outcome, cache).inc()
        else:
            tm = self.metrics.tier(tier)
            self.metrics.requests.labels(tier, outcome, cache).inc()
            tm.duration.observe(elapsed)
            if outcome == "ok":
                tm.ttft.observe(ttft if ttft is not None else elapsed)
            if usage is not None:
                self._account(tier, tm, usage, cache)
        if not self.access_log.enabled:
            return
        fields: dict[str, Any] = {"msg": "request", "request_id": rid, "endpoint": endpoint, "status": status,
                                  "outcome": outcome, "cache": cache, "tier": tier,
                                  "duration_ms": round(elapsed * 1000, 2)}
        if ctx is not None:
            fields["model"] = ctx.model_alias[:100]
            fields["tenant"] = ctx.tenant
            fields["stream"] = ctx.stream
        if replica:
            fields["replica"] = replica
        if usage is not None:
            fields["tokens_in"], fields["tokens_out"] = usage.input, usage.output
        self.access_log.write(fields)

    def _account(self, tier: str, tm: TierMetrics, usage: Usage, cache: str) -> None:
        hit = cache in ("exact", "semantic")
        if not hit:
            self.costs.record_throughput(tier, usage)
        tm.tokens_input.inc(usage.input)
        tm.tokens_output.inc(usage.output)
        if usage.cached:
            tm.tokens_cached.inc(usage.cached)
        actual, baseline = self.costs.cost(tier, usage, hit)
        tm.cost.inc(actual)
        tm.baseline_cost.inc(baseline)
        saved = baseline - actual
        if saved > 0:
            lever = "cache_" + cache if hit else ("routing" if tier != self.costs.baseline.name else "")
            if lever:
                self.metrics.savings.labels(lever).inc(saved)

    async def handle_models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "thrifty", "root": t.model}
                for t in self.config.tiers for name in t.served_names]
        return web.json_response({"object": "list", "data": data})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        up = sum(r.healthy for r in self.pool.all())
        if up == 0:
            return web.Response(status=503, text="no healthy replica\n")
        return web.Response(text="ok\n")

    async def handle_passthrough(self, request: web.Request) -> web.StreamResponse:
        """Anything the sidecar does not understand goes, unchanged, to a healthy replica."""
        assert self.session is not None
        tier_name = request.headers.get(TIER_HEADER) or self.config.tiers[0].name
        if tier_name not in self.pool.tiers:
            return ApiError(404, f"unknown tier {tier_name!r} in {TIER_HEADER}").to_response()
        healthy = [r for r in self.pool.tiers[tier_name] if r.healthy]
        if not healthy:
            return ApiError(503, f"no healthy replica of tier {tier_name!r}", retry_after_s=1, outcome="shed").to_response()
        replica = min(healthy, key=lambda r: r.inflight)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self.session.request(request.method, replica.url + request.rel_url.raw_path_qs, headers=headers,
                                            data=request.content if request.body_exists else None) as resp:
                out = web.StreamResponse(status=resp.status, reason=resp.reason,
                                         headers={k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP})
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ApiError(502, f"replica {replica.url} failed: {type(exc).__name__}").to_response()


def build_app(sidecar: Sidecar) -> web.Application:
    """The aiohttp app: every path; the hot ones only see connections the raw front handed over."""
    app = web.Application(client_max_size=sidecar.max_body_bytes, handler_args={"max_field_size": 65536})
    app[SIDECAR_KEY] = sidecar
    api = aiohttp_handler(sidecar.handle_api, sidecar.max_body_bytes)
    for path in ENDPOINTS:
        app.router.add_route("*", path, api)
    app.router.add_get("/v1/models", sidecar.handle_models)
    app.router.add_get("/metrics", sidecar.handle_metrics)
    app.router.add_get("/healthz", sidecar.handle_healthz)
    app.router.add_route("*", "/{tail:.*}", sidecar.handle_passthrough)
    app.on_startup.append(sidecar.start)
    app.on_cleanup.append(sidecar.stop)
    return app


class Listener:
    """The sidecar on its port: the raw front for the hot endpoints, the aiohttp app behind it."""

    def __init__(self, front: FrontServer, runner: web.AppRunner) -> None:
        self.front = front
        self.runner = runner

    @property
    def port(self) -> int:
        return self.front.port

    async def cleanup(self) -> None:
        await self.front.close()
        await self.runner.cleanup()


async def serve(sidecar: Sidecar, host: str, port: int) -> Listener:
    """Start the sidecar on host:port (port 0 picks a free one); returns what to clean up."""
    runner = web.AppRunner(build_app(sidecar), access_log=None, handler_cancellation=True)
    await runner.setup()  # no site of its own: the front hands it connections
    assert runner.server is not None
    front = FrontServer(sidecar.handle_api, ENDPOINTS, runner.server, sidecar.max_body_bytes)
    try:
        await front.start(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(front, runner)


def bound_port(listener: Listener) -> int:
    return listener.port
