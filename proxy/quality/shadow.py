"""`QualityLoop`: shadow evaluation, feedback, the cache watch and the savings ledger of one sidecar.

The pipeline calls it at four points: `draw_control` before the caches (a control request
takes the baseline path), `consider` once the answering tier or cache hit is known (the
shadow draw), `finished` from the finish step (ledger, feedback registration, and the
shadow call itself, started as a task only then: the reply has been handed to the client,
so a shadow call is never on its latency path), and `POST /v1/thrifty/feedback`.

Rules, each tested: a shadow call is skipped (counted in `thrifty_shadow_skipped_total`)
when `quality.shadow.max_inflight` are open or the reference tier has requests waiting in
admission (shed first under load); it carries the client's credentials (tenant-scoped:
the reference tier sees the same tenant) and its answer is never stored in a cache; its
cost is shadow spend (`thrifty_shadow_cost_dollars_total`, also in the reference tier's
`thrifty_cost_dollars_total` and charged to the ledger's treated group). A sampled
streaming request is judged on the text its stream carried (the relay assembles it,
`proxy/http/stream_answer.py`); the shadow call itself is never streamed.

Verdicts go to the controller in telemetry (bounded list per window, `drain`/`requeue`)
and are summed locally into `thrifty_quality_retained` per tier pair (a sidecar-local view;
the controller's calibrator is the one that sets the router threshold).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from thrifty.config import Config, baseline_tier
from thrifty.proxy.http.conform import ORIGIN_KEY
from thrifty.proxy.http.errors import ApiError
from thrifty.proxy.http.messages import FrontRequest
from thrifty.proxy.observe.accounting import CostModel, Usage
from thrifty.proxy.observe.metrics import SidecarMetrics
from thrifty.proxy.quality.cache_watch import CacheWatch
from thrifty.proxy.quality.judges import EmbeddingJudge, ExactJudge, Judge, LlmJudge, answer_text
from thrifty.proxy.quality.ledger import Ledger
from thrifty.proxy.quality.metrics import QualityMetrics
from thrifty.proxy.request.context import RequestContext
from thrifty.proxy.request.tenant import tenant_of
from thrifty.wire.quality import ShadowVerdict, wilson

log = logging.getLogger(__name__)
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
FEEDBACK_PATH = "/v1/thrifty/feedback"
_REFERENCE_USAGE = Usage(input=1000, output=200)


@dataclass(slots=True)
class Sampled:
    """What a shadow call or a later feedback needs from a finished request (the context is reused)."""

    request_id: str
    tenant: str
    group: str
    kind: str  # "router" | "cache" | "" (answered by the reference itself: ledger only)
    cheap_tier: str
    route: str  # the tier asked for
    cluster: int
    ease: float
    counterfactual: bool = False  # the reference served it; the shadow call asks the cheap tier
    endpoint: str = ""
    body: dict[str, Any] | None = None
    authorization: str = ""
    answer: str | None = None


class QualityLoop:
    def __init__(self, config: Config, *, relay: Any, costs: CostModel, sidecar_metrics: SidecarMetrics,
                 levers: Callable[[], Any], rng: random.Random | None = None) -> None:
        q = config.quality
        self.settings = q
        self.tenancy = config.cache.tenancy
        self.relay = relay
        self.costs = costs
        self.sidecar_metrics = sidecar_metrics
        self.levers = levers
        self.rng = rng or random.Random()
        self.reference = q.shadow.reference_tier or baseline_tier(config).name
        self.models = {t.name: t.model for t in config.tiers}
        price = {t.name: costs.dollars(t, _REFERENCE_USAGE) for t in config.tiers}
        self.cheaper = {t for t in price if price[t] < price[self.reference]}
        self.cheapest = min(self.cheaper, key=lambda t: price[t]) if self.cheaper else None
        self.watch = CacheWatch(q.cache_watch, None)
        self.verdicts: deque[ShadowVerdict] = deque(maxlen=q.shadow.max_verdicts)
        self.pending: OrderedDict[str, Sampled] = OrderedDict()  # feedback targets, newest last
        self.pairs: dict[tuple[str, str], list[float]] = {}  # (cheap, reference) -> [judged, score sum]
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.shadow_started: deque[float] = deque(maxlen=64)  # recent shadow calls' monotonic start times
        self._judge: Judge | None = None
        # last: the registry reads the gauges (and so the state above) when they are registered
        self.metrics = QualityMetrics(sidecar_metrics.registry, self._gauges)
        self.ledger = Ledger(self.metrics, rate=q.control.rate, baseline_tier=baseline_tier(config).name,
                             confidence=q.confidence, rng=self.rng)

    # --- the request path's hooks -----------------------------------------------------
    def draw_control(self, ctx: RequestContext) -> bool:
        return self.settings.enabled and self.ledger.draw(ctx)

    def consider(self, ctx: RequestContext) -> None:
        """The shadow draw, once the answering tier (or cache hit) is known.

        A cheaper answer (or semantic hit) is re-asked of the reference tier; a routed request
        the reference answered is asked of the cheapest tier instead (the counterfactual), so
        the sample covers every router score, not only those above the threshold in force:
        the calibrator can then loosen a conservative threshold as well as tighten one."""
        if not self.settings.enabled or ctx.group == "control" or ctx.endpoint not in PATHS:
            return
        if ctx.cache_result == "exact" or self.rng.random() >= self.settings.shadow.rate:
            return
        if ctx.cache_result == "semantic" or ctx.tier in self.cheaper:
            ctx.shadow = True
        elif ctx.tier == self.reference:
            if ctx.group == "treated":
                self.ledger.judged("treated", 1.0)  # the reference's own answer: as good as itself
            if ctx.router_score is not None and self.cheapest is not None:
                ctx.shadow = True  # counterfactual: what the cheapest tier would have answered

    def finished(self, ctx: RequestContext, authorization: str = "") -> None:
        """From the finish step (the reply is complete): ledger, feedback registration, the shadow task."""
        if not self.settings.enabled or not ctx.validated or ctx.endpoint not in PATHS:
            return
        self.ledger.finished(ctx, ctx.dollars, ctx.baseline_dollars)
        if ctx.outcome != "ok":
            return
        served_cheap = ctx.cache_result == "semantic" or ctx.tier in self.cheaper
        kind = "cache" if ctx.cache_result == "semantic" else ("router" if served_cheap else "")
        cheap = ctx.tier if served_cheap else (self.cheapest or ctx.tier)
        if kind == "cache" and isinstance(ctx.answer_body, dict):
            origin = ctx.answer_body.get(ORIGIN_KEY)
            cheap = origin if isinstance(origin, str) else cheap
        s = Sampled(ctx.request_id, ctx.tenant, ctx.group, kind, cheap, ctx.requested_tier,
                    ctx.router_cluster, ctx.router_score if ctx.router_score is not None else -1.0)
        if self.settings.feedback_pending:
            self.pending[ctx.request_id] = s
            while len(self.pending) > self.settings.feedback_pending:
                self.pending.popitem(last=False)
        if not ctx.shadow or self.settings.shadow.judge == "feedback":
            return
        s = replace(s, kind=kind or "router", counterfactual=not served_cheap)
        s.answer = answer_text(ctx.answer_body)
        if s.answer is None:
            self.metrics.skipped.labels("no_answer").inc()
            return
        if self.inflight >= self.settings.shadow.max_inflight:
            self.metrics.skipped.labels("inflight").inc()
            return
        if self.relay.admission.depths().get(s.cheap_tier if not served_cheap else self.reference, 0) > 0:
            self.metrics.skipped.labels("load").inc()
            return
        s.endpoint, s.body, s.authorization = ctx.endpoint, ctx.body, authorization
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(self._shadow(s), name=f"shadow-{ctx.request_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the shadow call ----------------------------------------------------------------
    async def _shadow(self, s: Sampled) -> None:
        try:
            await asyncio.sleep(0)  # the front writes the reply in the step that finished the request
            self.shadow_started.append(time.monotonic())
            assert s.body is not None
            body = {k: v for k, v in s.body.items() if k not in ("stream", "stream_options")}
            tier = s.cheap_tier if s.counterfactual else self.reference
            other = answer_text(await self.ask(tier, s.endpoint, body, s.authorization, s.request_id, s.group))
            if other is None or s.answer is None:
                self.metrics.skipped.labels("no_answer").inc()
                return
            cheap, ref = (other, s.answer) if s.counterfactual else (s.answer, other)
            score = await self.judge().score(_question(s.endpoint, s.body), cheap, ref)
            if score is None:
                self.metrics.skipped.labels("unjudged").inc()
                return
            self.record(s, score)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a shadow failure never touches the client; counted
            log.exception("shadow evaluation failed")
        finally:
            self.inflight -= 1

    async def ask(self, ref: str, endpoint: str, body: dict[str, Any], authorization: str, request_id: str,
                  group: str) -> dict[str, Any] | None:
        """One non-streaming call to tier `ref`, outside every cache; its cost is shadow spend."""
        body = {**body, "model": self.models[ref]}
        raw = json.dumps(body).encode()
        sctx = RequestContext(request_id=f"{request_id}.shadow", endpoint=endpoint, body=body, model_alias=str(body["model"]),
                              requested_tier=ref, tier=ref, bypass_cache=True)
        headers = {"content-type": "application/json"}
        if authorization:
            headers["authorization"] = authorization
        request = FrontRequest("POST", PATHS[endpoint], headers, len(raw), raw, None)  # type: ignore[arg-type]
        try:
            reply = await self.relay.send(request, sctx, raw, keep_body=True)
        except ApiError:
            self.metrics.calls.labels(ref, "error").inc()
            return None
        if reply.status != 200 or sctx.usage is None:
            self.metrics.calls.labels(ref, "error").inc()
            return None
        self.metrics.calls.labels(ref, "ok").inc()
        self.costs.record_throughput(ref, sctx.usage)
        dollars, _ = self.costs.cost(ref, sctx.usage, False)
        self.metrics.cost.labels(ref).inc(dollars)
        self.sidecar_metrics.tier(ref).cost.inc(dollars)
        self.ledger.spend(group, dollars)
        return reply.thrifty_body if isinstance(reply.thrifty_body, dict) else None

    def judge(self) -> Judge:
        if self._judge is None:
            name = self.settings.shadow.judge
            if name == "embedding":
                embedder = getattr(self.levers(), "embedder", None)
                if embedder is None:
                    raise RuntimeError("quality.shadow.judge embedding needs the sidecar's embedder (semantic cache or router)")
                self._judge = EmbeddingJudge(embedder.embed, self.settings.shadow.embedding_agree)
            elif name == "llm":
                self._judge = LlmJudge(self._ask_grade)
            else:
                self._judge = ExactJudge()
        return self._judge

    async def _ask_grade(self, prompt: str) -> str | None:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0}
        return answer_text(await self.ask(self.reference, "chat", body, "", "judge", "treated"))

    # --- verdicts -------------------------------------------------------------------
    def record(self, s: Sampled, score: float) -> None:
        """One judged pair: metrics, the controller's list, the local pair estimate, cache watch, ledger."""
        judge = self.settings.shadow.judge
        if s.kind:
            self.metrics.verdicts.labels(s.kind, s.cheap_tier, self.reference, judge).inc()
            self.metrics.score.labels(s.kind, s.cheap_tier, self.reference, judge).inc(score)
            self.verdicts.append(ShadowVerdict(s.kind, s.cheap_tier, self.reference, s.cluster, s.ease, score))
            pair = self.pairs.setdefault((s.cheap_tier, self.reference), [0.0, 0.0])
            pair[0] += 1
            pair[1] += score
            if s.kind == "cache":
                self.watch.observe(s.route, score)
        if not s.counterfactual:  # a counterfactual judged an answer nobody was served
            self.ledger.judged(s.group, score)

    def drain(self, limit: int) -> list[ShadowVerdict]:
        out = []
        while self.verdicts and len(out) < limit:
            out.append(self.verdicts.popleft())
        return out

    def requeue(self, verdicts: list[ShadowVerdict]) -> None:
        """Verdicts a lost window carried go back in front (the oldest fall off a full buffer)."""
        room = (self.verdicts.maxlen or 0) - len(self.verdicts)
        for v in reversed(verdicts[-room:] if room > 0 else []):
            self.verdicts.appendleft(v)

    def _gauges(self) -> list[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
        conf = self.settings.confidence
        retained = []
        for (cheap, ref), (n, total) in self.pairs.items():
            lo, _ = wilson(total, n, conf)
            retained += [([cheap, ref, "mean"], total / n if n else 0.0), ([cheap, ref, "lower"], lo)]
        savings = self.ledger.savings() if hasattr(self, "ledger") else {}
        ledger = [([k], v) for k, v in savings.items() if v is not None]
        floor = self.watch.floor
        return [
            ("thrifty_quality_retained", "judged quality of a cheaper tier's answers vs the reference (this sidecar)",
             ["cheap_tier", "reference_tier", "bound"], retained),
            ("thrifty_cache_false_hit_rate", "judged semantic hits that were wrong", ["route", "bound"], self.watch.gauges()),
            ("thrifty_cache_similarity_floor", "the semantic cache's similarity floor in force", [],
             [([], floor)] if floor is not None else []),
            ("thrifty_ledger_savings_ratio", "control-group savings: measured (with bounds) and modelled", ["kind"], ledger),
        ]

    # --- feedback -------------------------------------------------------------------
    def feedback(self, request_id: str, score: float, tenant: str) -> bool:
        """A score an application posts for one of its recent requests; False when unknown."""
        s = self.pending.get(request_id)
        if s is None or s.tenant != tenant:
            return False
        del self.pending[request_id]  # one score per request
        self.record(s, score)
        return True

    async def handle_feedback(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            return ApiError(400, "the body must be JSON: {\"request_id\": str, \"score\": number in [0, 1]}").to_response()
        if not isinstance(data, dict):
            return ApiError(400, "the body must be a JSON object").to_response()
        rid, score = data.get("request_id"), data.get("score")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            return ApiError(400, "request_id must be a non-empty string (the X-Request-Id of the answer)",
                            param="request_id").to_response()
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            return ApiError(400, "score must be a number in [0, 1]", param="score").to_response()
        h = request.headers
        tenant = tenant_of(h.get("authorization"), h.get("x-thrifty-tenant"), request.remote, self.tenancy)
        if not self.feedback(rid, float(score), tenant):
            self.metrics.feedback.labels("unknown_id").inc()
            return ApiError(404, f"no recent request {rid!r} of this tenant awaits feedback", param="request_id",
                            code="request_not_found").to_response()
        self.metrics.feedback.labels("accepted").inc()
        return web.json_response({"object": "thrifty.feedback", "request_id": rid, "accepted": True})

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _question(endpoint: str, body: dict[str, Any]) -> str:
    if endpoint == "chat":
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
        content = last.get("content")
        return content if isinstance(content, str) else json.dumps(content)[:4000]
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)[:4000]

