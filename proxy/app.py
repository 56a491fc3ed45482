"""The sidecar process's state and wiring, and the endpoints that are not the request path.

`Sidecar` owns what outlives a request: the replica pool and its scrapes, one balancer
per tier, admission queues, metrics, the cost model, the levers and the upstream
connections. It wires them into a `Pipeline` (pipeline.py: the request path of the
hot endpoints) and answers `/v1/models` (from the config), `/metrics`, `/healthz`, and
forwards any path it does not understand unchanged to a replica. The hot endpoints
are served by the raw HTTP front (`http/front.py`); everything else by the aiohttp app,
which the front hands those connections to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from thrifty.config import Config
from thrifty.proxy.balance.admission import Admission
from thrifty.proxy.batch.api import BatchApi
from thrifty.proxy.batch.runner import BatchRunner
from thrifty.proxy.batch.store import BatchStore
from thrifty.proxy.balance.balancer import Balancer, build_balancer
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.kv_hub import KvEventHub, kv_event_sources, tier_tokenizer
from thrifty.proxy.balance.pool import SCRAPE_INTERVAL_S, ReplicaPool, replica_urls
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.http.front import FrontServer
from thrifty.proxy.http.messages import aiohttp_handler
from thrifty.proxy.http.upstream import UpstreamPool
from thrifty.proxy.levers.protocol import Levers, NoLevers
from thrifty.proxy.observe.accounting import DEFAULT_NOMINAL_TOKENS_PER_S, CostModel
from thrifty.proxy.observe.logs import LOGGER_NAME, AccessLog
from thrifty.proxy.observe.metrics import SidecarMetrics
from thrifty.proxy.pipeline import Pipeline
from thrifty.proxy.quality.shadow import FEEDBACK_PATH, QualityLoop
from thrifty.proxy.relay import Relay, make_session
from thrifty.proxy.request.context import TIER_HEADER
from thrifty.proxy.request.validate import DEFAULT_MAX_BODY_BYTES, ENDPOINTS

log = logging.getLogger(LOGGER_NAME)

SIDECAR_KEY = web.AppKey("sidecar", object)
_RESPONSES_PREFIX = "/v1/responses/"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                         "transfer-encoding", "upgrade", "host", "content-length"})


class Sidecar:
    """All per-process state of one sidecar; `build_app` exposes it as `app[SIDECAR_KEY]`."""

    def __init__(self, config: Config, *, levers: Levers | None = None,
                 replicas: dict[str, list[str]] | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 access_log: AccessLog | None = None, nominal_tokens_per_s: float = DEFAULT_NOMINAL_TOKENS_PER_S,
                 scrape_interval_s: float = SCRAPE_INTERVAL_S, max_attempts: int = 3) -> None:
        self.config = config
        self.max_body_bytes = max_body_bytes
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
        self.admission = Admission([t.name for t in config.tiers], max_queue=adm.max_queue, max_wait_s=adm.max_wait_s,
                                   flex_max_wait_s=adm.flex_max_wait_s or 4 * adm.max_wait_s)
        self.pool.on_change(self.admission.wake)
        self.metrics = SidecarMetrics([t.name for t in config.tiers])
        self.metrics.attach_pool(self.pool, self.admission.depths)
        self.metrics.attach_lanes(self.admission)
        self.metrics.registry.register(self.kv_hub.collector())
        self.costs = CostModel(config, nominal_tokens_per_s=nominal_tokens_per_s, replicas={t: len(u) for t, u in urls.items()})
        self.policy: dict[str, Any] = {}
        self.session: aiohttp.ClientSession | None = None  # passthrough of unknown paths only
        self.upstream = UpstreamPool(config.timeouts)  # the hot path's keep-alive connections
        self.relay = relay = Relay(self.pool, self.balancers, self.admission, self.metrics, self.upstream, config.timeouts,
                                   models={t.name: t.model for t in config.tiers}, tokenizers=self.tokenizers,
                                   max_attempts=max_attempts,
                                   answer_budgets={t.name: (t.default_max_tokens, t.engine.max_model_len) for t in config.tiers})
        self.pipeline = Pipeline(config, levers=levers or NoLevers(), relay=relay, metrics=self.metrics, costs=self.costs,
                                 access_log=access_log or AccessLog(enabled=False), max_body_bytes=max_body_bytes)
        self.quality: QualityLoop | None = None
        if config.quality.enabled:
            self.quality = QualityLoop(config, relay=relay, costs=self.costs, sidecar_metrics=self.metrics,
                                       levers=lambda: self.pipeline.levers)
            self.quality.watch.semantic = getattr(self.pipeline.levers, "semantic", None)
            self.pipeline.quality = self.quality
        store = BatchStore(config.batch.store) if config.batch.store else None
        self.batch_runner = None if store is None else BatchRunner(
            store, self.pipeline.handle, queued=lambda: sum(self.admission.depths().values()),
            concurrency=config.batch.concurrency, pressure=self.pipeline.interactive,
            on_line=self.metrics.batch_lines_done)
        self.batch_api = BatchApi(store, config.cache.tenancy, max_file_bytes=config.batch.max_file_bytes,
                                  on_change=self.batch_runner.wake if self.batch_runner else lambda: None)
        if self.batch_runner is not None:
            self.metrics.attach_batch(lambda: self.batch_runner.backlog if self.batch_runner else 0)

    @property
    def levers(self) -> Levers:
        return self.pipeline.levers

    def set_levers(self, levers: Levers) -> None:
        self.pipeline.levers = levers
        if self.quality is not None:  # the cache watch raises the floor of this semantic cache
            self.quality.watch.semantic = getattr(levers, "semantic", None)

    # --- lifecycle -------------------------------------------------------------------
    async def start(self, app: web.Application | None = None) -> None:
        self.session = make_session(self.config.timeouts)
        await self.pool.start()
        self.kv_hub.start()
        if self.batch_runner is not None:
            self.batch_runner.start()
        log.info("sidecar started", extra={"fields": {"replicas": {t: [r.url for r in rs] for t, rs in self.pool.tiers.items()}}})

    async def stop(self, app: web.Application | None = None) -> None:
        if self.batch_runner is not None:
            await self.batch_runner.stop()
            self.batch_runner.store.close()
        if self.quality is not None:
            await self.quality.aclose()
        await self.kv_hub.close()
        await self.pool.close()
        self.upstream.close()
        if self.session:
            await self.session.close()

    def apply_policy(self, policy: dict[str, Any]) -> None:
        """Policy pushed by the controller; kept when the controller goes away."""
        self.policy.update(policy)
        self.levers.apply_policy(policy)
        log.info("policy applied", extra={"fields": {"policy": {k: v for k, v in policy.items() if isinstance(v, (int, float, bool, str))}}})

    # --- the endpoints that are not the request path --------------------------------------
    async def handle_models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "thrifty", "root": t.model}
                for t in self.config.tiers for name in t.served_names]
        return web.json_response({"object": "list", "data": data})

    async def handle_model(self, request: web.Request) -> web.Response:
        """`GET /v1/models/{id}`: any listed alias (model ids may contain '/'), else an OpenAI-shaped 404."""
        model_id = request.match_info["model"]
        for t in self.config.tiers:
            if model_id in t.served_names:
                return web.json_response({"id": model_id, "object": "model", "created": int(time.time()),
                                          "owned_by": "thrifty", "root": t.model})
        return ApiError(404, f"The model `{model_id}` does not exist", param="model", code="model_not_found").to_response()

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
        """Anything the sidecar does not understand goes, unchanged, to a healthy replica.

        Unknown `/v1/*` paths (API calls the sidecar does not model yet) are admitted like
        the hot path (a saturated tier queues or sheds them) and counted in the request
        metrics with endpoint-agnostic labels; other paths (`/health`, `/tokenize`, ...) are not."""
        assert self.session is not None
        home = self._conversation_home(request.path)  # GET /v1/responses/{id}[/...]: the replica that holds it
        tier_name = home[0] if home else request.headers.get(TIER_HEADER) or self.config.tiers[0].name
        if tier_name not in self.pool.tiers:
            return ApiError(404, f"unknown tier {tier_name!r} in {TIER_HEADER}").to_response()
        replicas = self.pool.tiers[tier_name]
        api = request.path.startswith("/v1/")
        started, outcome = time.monotonic(), "ok"
        replica = None
        try:
            if api:
                balancer = self.balancers[tier_name]
                wanted = PickRequest(tokens=256, pinned=home[1] if home else "")
                pick, _ = await self.admission.admit(tier_name, lambda: balancer.pick(wanted, replicas),
                                                     why_not=lambda: f"{sum(r.healthy for r in replicas)} healthy replicas")
                replica = pick.replica
            else:
                healthy = [r for r in replicas if r.healthy]
                if not healthy:
                    raise ApiError(503, f"no healthy replica of tier {tier_name!r}", retry_after_s=1, outcome="shed")
                replica = min(healthy, key=lambda r: r.inflight)
            replica.inflight += 1
            out = await self._forward(request, replica.url)
            if out.status >= 400:
                outcome = "client_error" if out.status < 500 else "upstream_error"
            return out
        except ApiError as exc:
            outcome = exc.outcome
            return exc.to_response()
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "upstream_error"
            where = replica.url if replica else tier_name
            return ApiError(502, f"replica {where} failed: {type(exc).__name__}").to_response()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if replica is not None:
                replica.inflight -= 1
                self.admission.wake(tier_name)
            if api:
                self.metrics.requests.labels(tier_name, outcome, "miss").inc()
                self.metrics.tier(tier_name).duration.observe(time.monotonic() - started)

    def _conversation_home(self, path: str) -> tuple[str, str] | None:
        if not path.startswith(_RESPONSES_PREFIX):
            return None
        return self.relay.conversations.home(path[len(_RESPONSES_PREFIX):].split("/", 1)[0])

    async def _forward(self, request: web.Request, base_url: str) -> web.StreamResponse:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self.session.request(request.method, base_url + request.rel_url.raw_path_qs, headers=headers,
                                        data=request.content if request.body_exists else None) as resp:
            out = web.StreamResponse(status=resp.status, reason=resp.reason,
                                     headers={k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP})
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


def build_app(sidecar: Sidecar) -> web.Application:
    """The aiohttp app: every path; the hot ones only see connections the raw front handed over."""
    app = web.Application(client_max_size=sidecar.max_body_bytes, handler_args={"max_field_size": 65536})
    app[SIDECAR_KEY] = sidecar
    api = aiohttp_handler(sidecar.pipeline.handle, sidecar.max_body_bytes)
    for path in ENDPOINTS:
        app.router.add_route("*", path, api)
    app.router.add_get("/v1/models", sidecar.handle_models)
    app.router.add_get("/v1/models/{model:.+}", sidecar.handle_model)
    app.router.add_get("/metrics", sidecar.handle_metrics)
    app.router.add_get("/healthz", sidecar.handle_healthz)
    sidecar.batch_api.routes(app)
    if sidecar.quality is not None:
        app.router.add_post(FEEDBACK_PATH, sidecar.quality.handle_feedback)
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

    def stop_listening(self) -> None:
        self.front.stop_listening()

    async def cleanup(self, grace_s: float = 0.0) -> None:
        """Stop serving; `grace_s`: let requests in flight finish first (SIGTERM, `listen.drain_s`)."""
        sidecar = self.runner.app[SIDECAR_KEY] if self.runner.app is not None else None
        if grace_s > 0 and sidecar is not None and sidecar.batch_runner is not None:
            await sidecar.batch_runner.stop()  # its lines in flight go back to pending for the next sidecar
        await self.front.close(grace_s)
        await self.runner.cleanup()


async def serve(sidecar: Sidecar, host: str, port: int) -> Listener:
    """Start the sidecar on host:port (port 0 picks a free one); returns what to clean up."""
    runner = web.AppRunner(build_app(sidecar), access_log=None, handler_cancellation=True)
    await runner.setup()  # no site of its own: the front hands it connections
    assert runner.server is not None
    front = FrontServer(sidecar.pipeline.handle, ENDPOINTS, runner.server, sidecar.max_body_bytes)
    try:
        await front.start(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(front, runner)


def bound_port(listener: Listener) -> int:
    return listener.port
