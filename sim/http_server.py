"""A simulated vLLM replica served over HTTP in real time (the server behind `thrifty engine sim`).

It speaks the OpenAI API (chat and completions, streaming or not) and exposes `/metrics`
with vLLM's own `vllm:` names, so the sidecar, the controller and Prometheus cannot tell
it from a real engine, while the timing comes from the performance model in
`sim_model` (a GPU profile) running on the wall clock (optionally sped up). The text is
deterministic filler: this stands in for GPU timings at fleet scale, not for answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from thrifty.profiles import GpuProfile
from thrifty.sim.metrics import SimMetrics
from thrifty.sim.model import SimCompletion, SimReplica, SimRequest, SimStats, SpeculativeSim
from thrifty.sim.openai_api import (
    Generation, RequestError, chat_logprobs, completion_logprobs, filler_text, parse_generation, usage,
)

VLLM_VERSION = "0.32.0"  # the engine version whose API and metrics this mimics


@dataclass(slots=True)
class _Subscriber:
    queue: asyncio.Queue
    key: int  # choice index within its HTTP request
    prompt_tokens: int
    n: int
    max_tokens: int
    finish_reason: str
    sent: int = 0
    arrival: float = 0.0  # virtual time it was submitted


class SimEngine:
    """Runs a SimReplica against the wall clock and streams token events to waiting requests."""

    def __init__(self, profile: GpuProfile, metrics: SimMetrics, *, kv_blocks: int | None = None,
                 speculative: SpeculativeSim | None = None, seed: int = 0, time_scale: float = 1.0,
                 tick_s: float = 0.001) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.profile = profile
        self.metrics = metrics
        self.time_scale = time_scale
        self.tick_s = tick_s
        self.speculative = speculative
        self.replica = SimReplica(profile, kv_blocks=kv_blocks, speculative=speculative, seed=seed,
                                  hash_block_tokens=profile.block_tokens)
        self.replica.record_steps = True
        self._subs: dict[int, _Subscriber] = {}
        self._next_id = 0
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._seen = SimStats()

    def virtual_now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._drive(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def submit(self, sub: _Subscriber, output_tokens: int, block_hashes: tuple[int, ...]) -> int:
        now = self.virtual_now()
        self._pump(now)
        rid = self._next_id
        self._next_id += 1
        sub.arrival = now
        self.replica.submit(SimRequest(rid, now, sub.prompt_tokens, output_tokens, block_hashes), now)
        self._subs[rid] = sub
        self._publish_gauges()
        self._wake.set()
        return rid

    def cancel(self, rid: int) -> None:
        sub = self._subs.pop(rid, None)
        if sub is not None and self.replica.cancel(rid):
            self.metrics.child("vllm:request_success", "abort").inc()
            self._publish_gauges()

    async def _drive(self) -> None:
        while True:
            if not self._subs:
                self._wake.clear()
                await self._wake.wait()
            now = self.virtual_now()
            self._pump(now)
            # Sleep until the next step ends (tokens come out then), within [tick, 50 ms].
            upcoming = self.replica.next_step_end()
            delay = self.tick_s if upcoming is None else (upcoming - now) / self.time_scale
            await asyncio.sleep(min(0.05, max(self.tick_s, delay)))

    def _pump(self, now: float) -> None:
        """Advance the model to `now` and hand out the tokens generated since the last pump."""
        for completion in self.replica.advance(now):
            sub = self._subs.pop(completion.id, None)
            if sub is None:
                continue
            self._emit(sub, completion.output_tokens, completion.first_token_time, completion.cached_tokens)
            sub.queue.put_nowait(("done", sub.key, completion))
            self._observe_finished(sub, completion)
        for rid, sub in self._subs.items():
            progress = self.replica.progress(rid)
            if progress is not None and progress[1] is not None:
                self._emit(sub, progress[0], progress[1], self.replica.cached_tokens_of(rid))
        self._publish_counters()
        self._publish_gauges()

    def _emit(self, sub: _Subscriber, generated: int, first_token_time: float, cached: int) -> None:
        new = generated - sub.sent
        if new <= 0:
            return
        if sub.sent == 0:
            m = self.metrics
            m.child("vllm:time_to_first_token_seconds").observe((first_token_time - sub.arrival) / self.time_scale)
            m.child("vllm:prompt_tokens").inc(sub.prompt_tokens)
            m.child("vllm:prompt_tokens_by_source", "local_compute").inc(sub.prompt_tokens - cached)
            m.child("vllm:prompt_tokens_by_source", "local_cache_hit").inc(cached)
            m.child("vllm:prompt_tokens_cached").inc(cached)
            m.child("vllm:prompt_tokens_cached_by_source", "device").inc(cached)
        sub.sent = generated
        self.metrics.child("vllm:generation_tokens").inc(new)
        sub.queue.put_nowait(("tokens", sub.key, new))

    def _observe_finished(self, sub: _Subscriber, c: SimCompletion) -> None:
        m = self.metrics
        scale = self.time_scale
        m.child("vllm:request_success", sub.finish_reason).inc()
        m.child("vllm:e2e_request_latency_seconds").observe((c.finish_time - c.arrival) / scale)
        m.child("vllm:request_queue_time_seconds").observe(max(0.0, c.scheduled_time - c.arrival) / scale)
        m.child("vllm:request_inference_time_seconds").observe((c.finish_time - c.scheduled_time) / scale)
        m.child("vllm:request_prefill_time_seconds").observe((c.first_token_time - c.scheduled_time) / scale)
        m.child("vllm:request_decode_time_seconds").observe((c.finish_time - c.first_token_time) / scale)
        m.child("vllm:request_prompt_tokens").observe(c.prompt_tokens)
        m.child("vllm:request_generation_tokens").observe(c.output_tokens)
        m.child("vllm:request_params_max_tokens").observe(sub.max_tokens)
        m.child("vllm:request_max_num_generation_tokens").observe(sub.max_tokens)
        m.child("vllm:request_params_n").observe(sub.n)
        m.child("vllm:request_num_preemptions").observe(c.preemptions)
        m.child("vllm:request_prefill_kv_computed_tokens").observe(c.prompt_tokens - c.cached_tokens)
        if c.output_tokens > 1:
            m.child("vllm:request_time_per_output_token_seconds").observe(
                (c.finish_time - c.first_token_time) / (c.output_tokens - 1) / scale)
        if c.decode_steps:
            itl = m.child("vllm:inter_token_latency_seconds")
            gap = (c.finish_time - c.first_token_time) / c.decode_steps / scale
            for _ in range(min(c.decode_steps, 4096)):
                itl.observe(gap)

    def _publish_counters(self) -> None:
        m = self.metrics
        stats, seen = self.replica.stats, self._seen
        if stats.prefix_queries > seen.prefix_queries:
            m.child("vllm:prefix_cache_queries").inc(stats.prefix_queries - seen.prefix_queries)
        if stats.prefix_hits > seen.prefix_hits:
            m.child("vllm:prefix_cache_hits").inc(stats.prefix_hits - seen.prefix_hits)
        if stats.preemptions > seen.preemptions:
            m.child("vllm:num_preemptions").inc(stats.preemptions - seen.preemptions)
        spec = self.speculative
        if spec is not None and stats.spec_drafts > seen.spec_drafts:
            drafts = stats.spec_drafts - seen.spec_drafts
            m.child("vllm:spec_decode_num_drafts").inc(drafts)
            m.child("vllm:spec_decode_num_draft_tokens").inc(stats.spec_draft_tokens - seen.spec_draft_tokens)
            m.child("vllm:spec_decode_num_accepted_tokens").inc(
                max(0.0, stats.spec_accepted_tokens - seen.spec_accepted_tokens))
            for position in range(spec.num_tokens):  # position i is accepted when the first i+1 drafts are
                m.child("vllm:spec_decode_num_accepted_tokens_per_pos", str(position)).inc(
                    drafts * spec.acceptance_rate ** (position + 1))
        self._seen = SimStats(**{f: getattr(stats, f) for f in SimStats.__dataclass_fields__})
        log = self.replica.step_log
        if log:
            hist = m.child("vllm:iteration_tokens_total")
            for tokens, count in log:
                for _ in range(min(count, 4096)):
                    hist.observe(tokens)
            log.clear()

    def _publish_gauges(self) -> None:
        m = self.metrics
        m.child("vllm:num_requests_running").set(self.replica.running)
        m.child("vllm:num_requests_waiting").set(self.replica.waiting)
        m.child("vllm:num_requests_waiting_by_reason", "capacity").set(self.replica.waiting)
        m.child("vllm:kv_cache_usage_perc").set(self.replica.kv_usage)


class SimServer:
    """The aiohttp application around one SimEngine."""

    def __init__(self, profile: GpuProfile, *, model: str | None = None, served_model_names: list[str] | None = None,
                 kv_blocks: int | None = None, speculative: SpeculativeSim | None = None, seed: int = 0,
                 time_scale: float = 1.0, max_model_len: int | None = None) -> None:
        self.profile = profile
        self.model = model or profile.model
        self.served_names = list(served_model_names or [self.model])
        self.max_model_len = max_model_len or profile.max_model_len
        self.metrics = SimMetrics(self.served_names[0], max_model_len=self.max_model_len,
                                  speculative_tokens=speculative.num_tokens if speculative else 0,
                                  cache_info={
                                      "block_size": str(profile.block_tokens), "cache_dtype": "auto",
                                      "num_gpu_blocks": str(kv_blocks or profile.kv_blocks),
                                      "kv_cache_size_tokens": str((kv_blocks or profile.kv_blocks) * profile.block_tokens),
                                      "prefix_caching_hash_algo": "sha256",
                                  })
        self.engine = SimEngine(profile, self.metrics, kv_blocks=kv_blocks, speculative=speculative, seed=seed,
                                time_scale=time_scale)
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self.engine.start()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.engine.stop()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except RequestError as exc:
            return web.json_response(exc.body(), status=exc.status)

    # ----------------------------------------------------------------- simple endpoints
    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _models(self, _: web.Request) -> web.Response:
        data = [{
            "id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": self.model,
            "parent": None, "max_model_len": self.max_model_len,
        } for name in self.served_names]
        return web.json_response({"object": "list", "data": data})

    # ----------------------------------------------------------------- generation
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("request body is not valid JSON") from None
        gen = parse_generation(kind, body, self.served_names, self.profile.block_tokens)
        for prompt_tokens, _ in gen.prompts:
            wanted = prompt_tokens + (gen.max_tokens or 1)
            if wanted > self.max_model_len or prompt_tokens >= self.max_model_len:
                raise RequestError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{wanted} tokens ({prompt_tokens} in the messages, {gen.max_tokens or 1} in the completion). "
                    "Please reduce the length of the messages or completion.", param="max_tokens")
        lengths = gen.output_lengths(self.max_model_len)
        queue: asyncio.Queue = asyncio.Queue()
        rids: dict[int, int] = {}
        for p, (prompt_tokens, hashes) in enumerate(gen.prompts):
            for c, (length, reason) in enumerate(lengths[p]):
                key = p * gen.n + c
                sub = _Subscriber(queue, key, prompt_tokens, gen.n, gen.max_tokens or length, reason)
                rids[key] = self.engine.submit(sub, length, hashes)
        try:
            if gen.stream:
                return await self._stream(request, gen, lengths, queue, len(rids))
            return await self._collect(gen, lengths, queue, len(rids))
        finally:
            for rid in rids.values():
                self.engine.cancel(rid)  # no-op for finished ones; frees the batch slot if the client left

    def _salt(self, gen: Generation, key: int) -> int:
        return (gen.seed + key * 7) % 1009

    async def _collect(self, gen: Generation, lengths: list[list[tuple[int, str]]], queue: asyncio.Queue,
                       expected: int) -> web.Response:
        finished: dict[int, SimCompletion] = {}
        while len(finished) < expected:
            event, key, payload = await queue.get()
            if event == "done":
                finished[key] = payload
        choices = []
        prompt_total = completion_total = cached_total = 0
        for key in sorted(finished):
            c = finished[key]
            p, i = divmod(key, gen.n)
            reason = lengths[p][i][1]
            tokens, text = filler_text(0, c.output_tokens, self._salt(gen, key))
            if i == 0:
                prompt_total += c.prompt_tokens
                cached_total += c.cached_tokens
            completion_total += c.output_tokens
            if gen.kind == "chat":
                choices.append({
                    "index": key, "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": chat_logprobs(tokens, gen.logprobs) if gen.logprobs is not None else None,
                    "finish_reason": reason, "stop_reason": None,
                })
            else:
                choices.append({
                    "index": key, "text": text,
                    "logprobs": completion_logprobs(tokens, gen.logprobs, 0) if gen.logprobs is not None else None,
                    "finish_reason": reason, "stop_reason": None,
                })
        body = {
            "id": ("chatcmpl-" if gen.kind == "chat" else "cmpl-") + gen.request_id,
            "object": "chat.completion" if gen.kind == "chat" else "text_completion",
            "created": gen.created, "model": gen.model, "choices": choices,
            "usage": usage(prompt_total, completion_total, cached_total),
        }
        return web.json_response(body)

    async def _stream(self, request: web.Request, gen: Generation, lengths: list[list[tuple[int, str]]],
                      queue: asyncio.Queue, expected: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chat = gen.kind == "chat"
        base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + gen.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": gen.created, "model": gen.model,
        }

        async def send(choices: list[dict[str, Any]], usage_body: dict[str, Any] | None = None, final: bool = False) -> None:
            chunk = {**base, "choices": choices}
            if gen.include_usage:
                chunk["usage"] = usage_body if final else None
            await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")

        if chat:
            for key in range(expected):
                await send([{"index": key, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])
        sent = dict.fromkeys(range(expected), 0)
        offsets = dict.fromkeys(range(expected), 0)
        finished: dict[int, SimCompletion] = {}
        while len(finished) < expected:
            event, key, payload = await queue.get()
            total = payload.output_tokens if event == "done" else sent[key] + payload
            tokens, text = filler_text(sent[key], total - sent[key], self._salt(gen, key))
            sent[key] = total
            reason = None
            if event == "done":
                finished[key] = payload
                p, i = divmod(key, gen.n)
                reason = lengths[p][i][1]
            if not tokens and reason is None:
                continue
            if chat:
                choice = {"index": key, "delta": {"content": text},
                          "logprobs": chat_logprobs(tokens, gen.logprobs) if gen.logprobs is not None else None,
                          "finish_reason": reason}
            else:
                choice = {"index": key, "text": text,
                          "logprobs": completion_logprobs(tokens, gen.logprobs, offsets[key]) if gen.logprobs is not None else None,
                          "finish_reason": reason}
                offsets[key] += len(text)
            if reason is not None:
                choice["stop_reason"] = None
            await send([choice])
        if gen.include_usage:
            prompt_total = sum(c.prompt_tokens for k, c in finished.items() if k % gen.n == 0)
            cached_total = sum(c.cached_tokens for k, c in finished.items() if k % gen.n == 0)
            completion_total = sum(c.output_tokens for c in finished.values())
            await send([], usage(prompt_total, completion_total, cached_total), final=True)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
