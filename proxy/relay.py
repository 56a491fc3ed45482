"""Talking to the replicas of one tier: pick one, send the request, relay the answer.

`Relay.send` is the step: the balancer and admission pick a replica, `open_upstream`
sends the request, and a replica that cannot be reached (or answers 502/503) is left
for another one while nothing has reached the client yet. `relay_stream` forwards SSE
events as they arrive (each write awaits the client's socket: back-pressure), picks
the `usage` chunk out for accounting, and if the replica dies mid-stream ends the
client's stream with an OpenAI-shaped error event instead of leaving it hanging.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from thrifty.config import TimeoutSettings
from thrifty.proxy.balance.admission import Admission
from thrifty.proxy.balance.balancer import Balancer
from thrifty.proxy.balance.filters import PickRequest
from thrifty.proxy.balance.pool import ReplicaPool, ReplicaState
from thrifty.proxy.balance.conversations import ConversationHomes
from thrifty.proxy.http.conform import ResponsesStreamEditor, StreamEditor, rewrite_model
from thrifty.proxy.http.errors import ApiError, upstream_error_body
from thrifty.proxy.http.messages import FrontRequest, Reply, StreamReply
from thrifty.proxy.http.stream_answer import StreamAnswer
from thrifty.proxy.http.upstream import UpstreamBroken, UpstreamPool, UpstreamResponse, UpstreamUnavailable
from thrifty.proxy.observe.accounting import Usage
from thrifty.proxy.observe.metrics import SidecarMetrics
from thrifty.proxy.request.context import TIER_HEADER, RequestContext
from thrifty.proxy.request.prefix import block_hashes, estimate_tokens, render_prompt
from thrifty.proxy.request.validate import lax, wants_usage
from thrifty.proxy.request.tokenize import PromptTokenizer, tokenize_request

__all__ = ["ClientGone", "Relay", "UpstreamOverloaded", "UpstreamUnavailable", "find_usage", "make_session",
           "open_upstream", "read_body", "relay_stream"]

_USAGE_RE = re.compile(rb'"usage":\s*\{')
RETRYABLE_STATUS = frozenset({502, 503})
_DECODER = json.JSONDecoder()
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class UpstreamOverloaded(UpstreamUnavailable):
    """The replica is up but refused the request (502 or 503): try another one, without marking this one down."""


class ClientGone(Exception):
    """The client closed its connection; the caller cancels the upstream request."""


class Relay:
    """Send validated requests to a replica of `ctx.tier`, retrying on another only before the first byte.

    On success the answer's usage, replica URL and (streaming) time to first event are
    on `ctx`; a request no replica could take raises `ApiError` (502, 503 when shed, 504)."""

    def __init__(self, pool: ReplicaPool, balancers: dict[str, Balancer], admission: Admission, metrics: SidecarMetrics,
                 upstream: UpstreamPool, timeouts: TimeoutSettings, models: dict[str, str],
                 tokenizers: dict[str, PromptTokenizer] | None = None, max_attempts: int = 3,
                 answer_budgets: dict[str, tuple[int | None, int | None]] | None = None) -> None:
        self.pool = pool
        self.balancers = balancers
        self.admission = admission
        self.metrics = metrics
        self.upstream = upstream
        self.timeouts = timeouts
        self.models = models  # tier -> the model name its replicas serve
        self.max_attempts = max_attempts
        self.tokenizers = tokenizers or {}  # tiers routed on their replicas' KV events (precise prefix scorer)
        self.conversations = ConversationHomes()  # Responses API: response id -> the replica that holds it
        self.answer_budgets = answer_budgets or {}  # tier -> (default_max_tokens, max_model_len)

    async def send(self, request: FrontRequest, ctx: RequestContext, raw: bytes, *, keep_body: bool) -> Reply | StreamReply:
        """The replica's answer to `ctx` (`keep_body`: parse a complete 200 answer into `Reply.thrifty_body`)."""
        tier = ctx.tier
        replicas = self.pool.tiers[tier]
        balancer = self.balancers[tier]
        cap, context_len = self.answer_budgets.get(tier, (None, None))
        body, strip_usage = upstream_body(ctx, raw, self.models[tier], default_budget(ctx, cap, context_len))
        pick_req, prompt_chars = pick_request(ctx, raw)
        pick_req.pinned = ctx.pinned_replica
        tokenizer = self.tokenizers.get(tier)
        if tokenizer is not None and ctx.endpoint in ("chat", "completions"):
            pick_req.token_ids = await tokenize_request(tokenizer, ctx.endpoint, ctx.body, prompt_chars)
        headers = {"Content-Type": "application/json", "X-Request-Id": ctx.request_id}
        auth = request.headers.get("authorization")
        if auth:
            headers["Authorization"] = auth
        tier_metrics = self.metrics.tier(tier)
        tried: set[str] = set()
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                if not any(r.healthy and r.url not in tried for r in replicas):
                    break
                tier_metrics.retries.inc()
            pick_req.exclude = tried
            pick, waited = await self.admission.admit(tier, lambda: balancer.pick(pick_req, replicas),
                                                      why_not=lambda: _why_not(replicas), lane=ctx.lane, tenant=ctx.tenant)
            if waited:
                tier_metrics.admission_wait.observe(waited)
                ctx.admission_wait += waited
            replica = pick.replica
            self.metrics.picks.labels(tier, replica.url, pick.reason).inc()
            replica.inflight += 1
            replica.inflight_tokens += pick_req.tokens
            sent = time.monotonic()
            resp: UpstreamResponse | None = None
            complete = False
            try:
                try:
                    resp = await open_upstream(self.upstream, replica.url, request.path, body, headers, self.timeouts)
                    if not ctx.stream or resp.status != 200:
                        data = await read_body(resp, self.timeouts)
                except UpstreamOverloaded as exc:
                    last_error = f"{replica.url}: {exc}"
                    tried.add(replica.url)
                    continue
                except UpstreamUnavailable as exc:
                    last_error = f"{replica.url}: {exc}"
                    replica.mark_down()
                    balancer.forget(replica.url)
                    tried.add(replica.url)
                    continue
                replica.observe_ttfb(time.monotonic() - sent)
                if not ctx.stream or resp.status != 200:
                    complete = True
                    out = _plain_reply(ctx, resp, data, keep_body)
                    ctx.usage = Usage.from_body(find_usage(data)) if resp.status == 200 else None
                    ctx.replica, ctx.ttft = replica.url, None
                    if ctx.endpoint == "responses" and resp.status == 200:
                        self._remember(response_id(out.thrifty_body if out.thrifty_body is not None else data),
                                       tier, replica.url)
                    return out
                stream = StreamReply({**SSE_HEADERS, "X-Request-Id": ctx.request_id, TIER_HEADER: tier,
                                      **({"X-Thrifty-Group": "control"} if ctx.group == "control" else {})})
                await stream.prepare(request)
                editor: StreamEditor | ResponsesStreamEditor = (
                    ResponsesStreamEditor(ctx.model_alias) if ctx.endpoint == "responses"
                    else StreamEditor(ctx.model_alias, strip_added_usage=strip_usage))
                # a shadow-sampled stream is also assembled into an answer for the judge (streams are never kept)
                answer = StreamAnswer(ctx.endpoint) if ctx.shadow and ctx.endpoint in ("chat", "completions") else None
                result = await relay_stream(resp, stream, editor=editor, on_gap=tier_metrics.itl.observe,
                                            timeouts=self.timeouts, tap=answer.feed if answer is not None else None)
                if result.error is not None:
                    if result.error.code == "upstream_disconnected":
                        replica.mark_down()
                    stream.thrifty_error = result.error
                else:
                    complete = True
                    await stream.write_eof()
                    if answer is not None:
                        ctx.answer_body = answer.body()
                ctx.usage = Usage.from_body(result.usage)
                ctx.replica = replica.url
                if isinstance(editor, ResponsesStreamEditor):
                    self._remember(editor.response_id, tier, replica.url)
                ctx.ttft = (result.first_byte_at - sent) if result.first_byte_at else None
                return stream
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

    def _remember(self, response_id: str | None, tier: str, replica_url: str) -> None:
        if response_id:
            self.conversations.remember(response_id, tier, replica_url)


def response_id(answer: bytes | Any) -> str | None:
    """The `id` of a Responses API answer: raw bytes, or the body the relay already parsed."""
    body = answer
    if isinstance(answer, bytes):
        try:
            body = json.loads(answer)
        except ValueError:
            return None
    value = body.get("id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


_BUDGET_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def default_budget(ctx: RequestContext, cap: int | None, context_len: int | None) -> int | None:
    """The answer-length cap to add to a chat/completions/responses request that sets none (the tier's
    `default_max_tokens`), shrunk to fit the tier's context next to the prompt. Why: without a
    bound a small model can ramble to its context limit (2,000 tokens for "What is the capital
    of France?"). None: the request keeps its own budget, or no room is known to be left."""
    if cap is None or ctx.endpoint not in ("chat", "completions", "responses") or any(ctx.body.get(k) is not None for k in _BUDGET_KEYS):
        return None
    if context_len:  # the token estimate is rough (~4 chars a token): leave it a quarter's slack
        cap = min(cap, context_len - estimate_tokens(render_prompt(ctx.endpoint, ctx.body)) * 5 // 4 - 16)
    return cap if cap >= 1 else None


def upstream_body(ctx: RequestContext, raw: bytes, model: str, max_tokens: int | None = None) -> tuple[bytes, bool]:
    """The body to send (re-serialised only when it must change) and whether to strip usage.

    The engine is asked for the answering tier's model by name (a routed request, or one that
    used an alias); a stream always asks for usage (for accounting), which is stripped again
    when the client did not ask for it; `max_tokens` (from `default_budget`) is added when the
    request set no budget."""
    body = ctx.body
    changes: dict[str, Any] = {}
    if ctx.model_alias != model:  # routed, or an alias the engine may not know: name the tier's model
        changes["model"] = model
    if max_tokens is not None:
        changes["max_output_tokens" if ctx.endpoint == "responses" else "max_tokens"] = max_tokens
    strip_usage = False
    if ctx.stream and ctx.endpoint != "responses":  # a Responses stream always ends with its usage
        if not wants_usage(body):
            opts = body.get("stream_options")
            changes["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            strip_usage = True
    if not changes:
        return raw, strip_usage
    if len(changes) == 1 and strip_usage and "stream_options" not in body:
        # Append the one key to the client's own bytes instead of re-encoding the body.
        end = raw.rstrip()
        if end.endswith(b"}") and not end.endswith(b"\x00}"):  # (not UTF-16 JSON)
            return end[:-1] + b',"stream_options":{"include_usage":true}}', strip_usage
    return json.dumps({**body, **changes}).encode(), strip_usage


def pick_request(ctx: RequestContext, raw: bytes) -> tuple[PickRequest, int]:
    """What the balancer weighs: the prompt's prefix blocks (affinity) and its token footprint
    (load); and the rendered prompt's length in characters."""
    if ctx.endpoint == "embeddings":
        return PickRequest(tokens=len(raw) // 4 + 1), len(raw)
    text = render_prompt(ctx.endpoint, ctx.body)
    return PickRequest(blocks=block_hashes(text), tokens=estimate_tokens(text) + min(_max_out(ctx.body), 4096)), len(text)


def _max_out(body: dict[str, Any]) -> int:
    """The output budget the balancer weighs: max_tokens (or max_completion_tokens) as vLLM reads it, else 256."""
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        try:
            value = lax(int, body.get(key))
        except ValueError:
            continue
        if value > 0:
            return value
    return 256


def _why_not(replicas: list[ReplicaState]) -> str:
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        return f"all {len(replicas)} replicas are down"
    return f"{len(healthy)} healthy replicas are saturated"


def _plain_reply(ctx: RequestContext, resp: UpstreamResponse, data: bytes, keep_body: bool) -> Reply:
    headers = {"Content-Type": resp.content_type, "X-Request-Id": ctx.request_id, TIER_HEADER: ctx.tier}
    if resp.status >= 400:
        headers["Content-Type"] = "application/json"
    if resp.status == 404 and ctx.endpoint == "embeddings" and b'"model"' not in data:
        # the engine has no embeddings route (a generative model): say so, not its framework's "Not Found"
        data = json.dumps(ApiError(404, f"The model `{ctx.model_alias}` (tier {ctx.tier}) does not serve embeddings",
                                   param="model", code="model_not_found").body()).encode()
    elif resp.status >= 400:
        data = upstream_error_body(resp.status, data)
        headers["Content-Type"] = "application/json"
    else:
        data = rewrite_model(data, ctx.model_alias)
    out = Reply(resp.status, data, headers)
    if keep_body and resp.status == 200:
        try:
            out.thrifty_body = json.loads(data)
        except ValueError:
            pass
    return out


def make_session(timeouts: TimeoutSettings, max_connections: int = 4096) -> aiohttp.ClientSession:
    """The aiohttp client for the rare paths (passthrough of unknown endpoints), not the hot one."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.first_byte_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"), cookie_jar=aiohttp.DummyCookieJar())


async def open_upstream(pool: UpstreamPool, base_url: str, path: str, body: bytes, headers: dict[str, str],
                        timeouts: TimeoutSettings) -> UpstreamResponse:
    try:
        resp = await pool.post(base_url, path, body, headers)
    except TimeoutError:
        raise ApiError(504, f"upstream replica did not answer within {timeouts.first_byte_s:g} s",
                       type="timeout_error", code="upstream_timeout", outcome="timeout") from None
    if resp.status in RETRYABLE_STATUS:
        resp.close()
        raise UpstreamOverloaded(f"replica answered {resp.status}")
    return resp


async def read_body(resp: UpstreamResponse, timeouts: TimeoutSettings) -> bytes:
    """The complete non-streaming answer; a replica dying or stalling is a clear error."""
    try:
        return await resp.read()
    except TimeoutError:
        resp.close()
        raise ApiError(504, f"upstream replica stopped answering for {timeouts.first_byte_s:g} s",
                       type="timeout_error", code="upstream_timeout", outcome="timeout") from None
    except UpstreamBroken as exc:
        resp.close()
        raise UpstreamUnavailable(f"replica closed the connection mid-answer: {exc}") from None


def find_usage(raw: bytes) -> dict[str, object] | None:
    """The `usage` object of a JSON answer, decoded without parsing the whole body."""
    start = raw.rfind(b'"usage"')  # usage comes last in vLLM's answers: search from the end
    m = _USAGE_RE.match(raw, start) if start != -1 else None
    if m is None:  # the last `"usage"` was inside a string: take the last real key
        for m in _USAGE_RE.finditer(raw):
            pass
        if m is None:
            return None
    try:
        usage, _ = _DECODER.raw_decode(raw[m.end() - 1 :].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


@dataclass(slots=True)
class StreamResult:
    usage: dict[str, object] | None = None
    first_byte_at: float | None = None
    error: ApiError | None = None  # the upstream failed mid-stream
    events: int = 0


async def relay_stream(resp: UpstreamResponse, out: StreamReply, *, editor: StreamEditor,
                       on_gap: Callable[[float], None], timeouts: TimeoutSettings,
                       tap: Callable[[bytes], None] | None = None) -> StreamResult:
    """Forward SSE events from `resp` to `out` (through `editor`) until the upstream ends; never raises for upstream faults.

    `tap` sees every whole event the client is sent (the quality loop's answer for a sampled stream)."""
    result = StreamResult()
    pending = b""
    last = time.monotonic()
    try:
        while (data := await resp.next_piece()) is not None:
            if pending:
                data = pending + data
            cut = data.rfind(b"\n\n")
            if cut == -1:
                pending = data
                continue
            pending = data[cut + 2 :]
            events = editor.feed(data[: cut + 2])
            if not events:
                continue
            now = time.monotonic()
            if result.first_byte_at is None:
                result.first_byte_at = now
            else:
                on_gap(now - last)
            last = now
            result.events += 1
            if tap is not None:
                tap(events)
            await _write(out, events)
        tail = b""
        if pending.strip():
            tail = editor.feed(pending if pending.endswith(b"\n\n") else pending + b"\n\n")
        if editor.held:
            tail += editor.flush()
        if tail:
            if tap is not None:
                tap(tail)
            await _write(out, tail)
    except TimeoutError:
        result.error = ApiError(504, f"upstream replica stalled for {timeouts.first_byte_s:g} s mid-stream",
                                type="timeout_error", code="upstream_timeout", outcome="timeout")
    except UpstreamBroken as exc:
        result.error = ApiError(502, f"upstream replica failed mid-stream ({exc}); the answer is incomplete",
                                type="upstream_error", code="upstream_disconnected", outcome="upstream_error")
    result.usage = editor.usage
    if result.error is not None:
        resp.close()
        await _write(out, editor.flush() + result.error.sse_event())
    return result


async def _write(out: StreamReply, data: bytes) -> None:
    try:
        await out.write(data)
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport already closed
        raise ClientGone(str(exc)) from None
