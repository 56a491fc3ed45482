"""The fake OpenAI-compatible replica over HTTP: one server for the simulator and the stub.

Contract: `SimServer(profile, ...)` is the simulated vLLM replica behind `thrifty engine sim`:
it speaks the OpenAI API (chat and completions, streaming or not) and exposes `/metrics` with
vLLM's own `vllm:` names, with timing from the performance model (`http_engines.SimEngine`)
on the wall clock (optionally sped up). `SimServer.instant(tokens, ...)` is the same server
answering at once with a fixed answer (`InstantEngine`), accepting any model name, plus
`/v1/embeddings` and an echo of every other path: the stub replica of the sidecar tests and
`thrifty bench overhead`. `Faults` inject what a real replica does when it goes wrong (a
delay, a hang, death mid-stream, an error status). Why one server: the answers' shapes come
from one code path (`openai_api`), so what the sidecar is tested against is what it meets
from the simulator. The text is deterministic filler: no model runs here.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from thrifty.profiles import GpuProfile
from thrifty.sim.http_engines import LOAD_GAUGES, InstantEngine, SimEngine, Subscriber
from thrifty.sim.metrics import SimMetrics
from thrifty.sim.model import SimCompletion, SpeculativeSim
from thrifty.sim.responses_api import (
    EventWriter, ResponseStore, chat_request, message_item, new_response_id, not_found, response_body, response_usage,
)
from thrifty.sim.openai_api import (
    STREAM_END, Generation, RequestError, content_choice, embeddings_body, finish_choice, parse_generation,
    reply_body, reply_choice, stream_chunk, usage,
)

VLLM_VERSION = "0.32.0"  # the engine version whose API and metrics this mimics
INSTANT_BLOCK_TOKENS = 16  # prefix-hash block size of the instant server (it caches nothing)
INSTANT_MAX_MODEL_LEN = 1 << 30  # the instant server refuses no prompt for its length


@dataclass(slots=True)
class Faults:
    """Misbehaviour on demand, applied to every generation request."""

    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0  # after each streamed chunk of text
    hang: bool = False  # never answer
    die_after_chunks: int | None = None  # abort the connection before this streamed chunk of a choice
    fail_status: int | None = None  # answer every request with this error status


@dataclass(slots=True)
class ServerStats:
    requests: int = 0  # generation and embedding requests received
    inflight: int = 0  # generation requests being answered
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keep_bodies: bool = False  # record every request body in `bodies`


class SimServer:
    """The aiohttp application around one engine (modelled or instant)."""

    def __init__(self, profile: GpuProfile, *, model: str | None = None, served_model_names: list[str] | None = None,
                 kv_blocks: int | None = None, speculative: SpeculativeSim | None = None, seed: int = 0,
                 time_scale: float = 1.0, max_model_len: int | None = None, faults: Faults | None = None) -> None:
        model = model or profile.model
        served = list(served_model_names or [model])
        max_len = max_model_len or profile.max_model_len
        metrics = SimMetrics(served[0], max_model_len=max_len,
                             speculative_tokens=speculative.num_tokens if speculative else 0,
                             cache_info={
                                 "block_size": str(profile.block_tokens), "cache_dtype": "auto",
                                 "num_gpu_blocks": str(kv_blocks or profile.kv_blocks),
                                 "kv_cache_size_tokens": str((kv_blocks or profile.kv_blocks) * profile.block_tokens),
                                 "prefix_caching_hash_algo": "sha256",
                             })
        engine = SimEngine(profile, metrics, kv_blocks=kv_blocks, speculative=speculative, seed=seed, time_scale=time_scale)
        self._setup(model, served, max_len, profile.block_tokens, metrics, engine, faults, stub_routes=False)

    @classmethod
    def instant(cls, tokens: int = 4, *, name: str = "stub", served_model_names: list[str] | None = None,
                faults: Faults | None = None) -> "SimServer":
        """Answers at once with `tokens` tokens per choice; any model name unless `served_model_names`."""
        server = cls.__new__(cls)
        metrics = SimMetrics(name, max_model_len=INSTANT_MAX_MODEL_LEN, only=LOAD_GAUGES)
        server._setup(name, list(served_model_names) if served_model_names else None, INSTANT_MAX_MODEL_LEN,
                      INSTANT_BLOCK_TOKENS, metrics, InstantEngine(tokens, metrics), faults, stub_routes=True)
        return server

    def _setup(self, model: str, served_names: list[str] | None, max_model_len: int, block_tokens: int,
               metrics: SimMetrics, engine: SimEngine | InstantEngine, faults: Faults | None, *, stub_routes: bool) -> None:
        self.model = model
        self.served_names = served_names  # None: any model name is served
        self.max_model_len = max_model_len
        self.block_tokens = block_tokens
        self.metrics = metrics
        self.engine = engine
        self.faults = faults or Faults()
        self.stats = ServerStats()
        self.responses = ResponseStore()  # the Responses API's conversations, on this replica only
        self.transports: set[Any] = set()  # every connection that sent a request (for a simulated crash)
        self.stub_routes = stub_routes  # /v1/embeddings and an echo of every other path
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        return self.served_names[0] if self.served_names else self.model

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/responses/{id}", self._get_response)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        if self.stub_routes:
            app.router.add_post("/v1/embeddings", self._embeddings)
            app.router.add_route("*", "/{tail:.*}", self._echo)
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
        self.engine.publish_inflight(self.stats.inflight)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _models(self, _: web.Request) -> web.Response:
        data = [{
            "id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": self.model,
            "parent": None, "max_model_len": self.max_model_len,
        } for name in (self.served_names or [self.model])]
        return web.json_response({"object": "list", "data": data})

    async def _echo(self, request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({"path": request.path_qs, "method": request.method, "body_bytes": len(data),
                                  "backend": self.model})

    # ----------------------------------------------------------------- requests
    async def _body(self, request: web.Request) -> Any:
        self.stats.requests += 1
        if request.transport is not None:
            self.transports.add(request.transport)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("request body is not valid JSON") from None
        if self.stats.keep_bodies:
            self.stats.bodies.append(body)
        return body

    async def _misbehave(self) -> None:
        f = self.faults
        if f.fail_status:
            raise RequestError("stub failure", status=f.fail_status, err_type="server_error")
        if f.hang:
            await asyncio.Event().wait()
        if f.delay_s:
            await asyncio.sleep(f.delay_s)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = body.get("model") if isinstance(body, dict) else None
        if self.served_names is not None and model not in self.served_names:
            raise RequestError(f"The model `{model}` does not exist.", status=404, err_type="NotFoundError", param="model")
        await self._misbehave()
        inputs = body.get("input")
        return web.json_response(embeddings_body(model, len(inputs) if isinstance(inputs, list) else 1))

    # ----------------------------------------------------------------- generation
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    # ----------------------------------------------------------------- Responses API
    async def _get_response(self, request: web.Request) -> web.Response:
        found = self.responses.get(request.match_info["id"])
        if found is None:
            raise not_found(request.match_info["id"])
        return web.json_response(found[1])

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        self.stats.inflight += 1
        try:
            body = await self._body(request)
            chat, messages = chat_request(body, self.responses)
            gen = parse_generation("chat", chat, self.served_names, self.block_tokens)
            gen.n = 1
            await self._misbehave()
            self._check_length(gen)
            length, _ = self.engine.output_lengths(gen, self.max_model_len)[0][0]
            queue: asyncio.Queue = asyncio.Queue()
            prompt_tokens, hashes = gen.prompts[0]
            rid = self.engine.submit(Subscriber(queue, 0, prompt_tokens, 1, gen.max_tokens or length, "stop"), length, hashes)
            try:
                response_id, created = new_response_id()
                if gen.stream:
                    return await self._stream_response(request, body, gen, queue, response_id, created, messages)
                while True:
                    event, _, done = await queue.get()
                    if event == "done":
                        break
                _, text = self.engine.text(0, done.output_tokens, self._salt(gen, 0))
                out = response_body(body, gen.model, response_id, created, text,
                                    response_usage(done.prompt_tokens, done.output_tokens, done.cached_tokens))
                self.responses.put(out, messages + [{"role": "assistant", "content": text}])
                return web.json_response(out)
            finally:
                self.engine.cancel(rid)
        finally:
            self.stats.inflight -= 1

    async def _stream_response(self, request: web.Request, body: dict[str, Any], gen: Generation, queue: asyncio.Queue,
                               response_id: str, created: int, messages: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        events = EventWriter()
        pending = response_body(body, gen.model, response_id, created, "", None, status="in_progress")
        item = message_item(response_id, "", status="in_progress")
        await response.write(events.event("response.created", response=pending)
                             + events.event("response.in_progress", response=pending)
                             + events.event("response.output_item.added", output_index=0, item=item)
                             + events.event("response.content_part.added", item_id=item["id"], output_index=0,
                                            content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        sent, text = 0, ""
        while True:
            event, _, payload = await queue.get()
            total = payload.output_tokens if event == "done" else sent + payload
            if total > sent:
                _, piece = self.engine.text(sent, total - sent, self._salt(gen, 0))
                text += piece
                sent = total
                await response.write(events.event("response.output_text.delta", item_id=item["id"], output_index=0,
                                                  content_index=0, delta=piece, logprobs=[]))
            if event == "done":
                break
        usage_body = response_usage(payload.prompt_tokens, payload.output_tokens, payload.cached_tokens)
        final = response_body(body, gen.model, response_id, created, text, usage_body)
        self.responses.put(final, messages + [{"role": "assistant", "content": text}])
        part = {"type": "output_text", "text": text, "annotations": []}
        await response.write(events.event("response.output_text.done", item_id=item["id"], output_index=0,
                                          content_index=0, text=text, logprobs=[])
                             + events.event("response.content_part.done", item_id=item["id"], output_index=0,
                                            content_index=0, part=part)
                             + events.event("response.output_item.done", output_index=0, item=final["output"][0])
                             + events.event("response.completed", response=final))
        await response.write_eof()
        return response

    def _check_length(self, gen: Generation) -> None:
        for prompt_tokens, _ in gen.prompts:
            wanted = prompt_tokens + (gen.max_tokens or 1)
            if wanted > self.max_model_len or prompt_tokens >= self.max_model_len:
                raise RequestError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{wanted} tokens ({prompt_tokens} in the messages, {gen.max_tokens or 1} in the completion). "
                    "Please reduce the length of the messages or completion.", param="max_tokens")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        self.stats.inflight += 1
        try:
            gen = parse_generation(kind, await self._body(request), self.served_names, self.block_tokens)
            await self._misbehave()
            return await self._answer(request, gen)
        finally:
            self.stats.inflight -= 1

    async def _answer(self, request: web.Request, gen: Generation) -> web.StreamResponse:
        self._check_length(gen)
        lengths = self.engine.output_lengths(gen, self.max_model_len)
        queue: asyncio.Queue = asyncio.Queue()
        rids: dict[int, int] = {}
        for p, (prompt_tokens, hashes) in enumerate(gen.prompts):
            for c, (length, reason) in enumerate(lengths[p]):
                key = p * gen.n + c
                sub = Subscriber(queue, key, prompt_tokens, gen.n, gen.max_tokens or length, reason)
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
            tokens, text = self.engine.text(0, c.output_tokens, self._salt(gen, key))
            if i == 0:
                prompt_total += c.prompt_tokens
                cached_total += c.cached_tokens
            completion_total += c.output_tokens
            choices.append(reply_choice(gen, key, tokens, text, lengths[p][i][1]))
        return web.json_response(reply_body(gen, choices, usage(prompt_total, completion_total, cached_total)))

    async def _stream(self, request: web.Request, gen: Generation, lengths: list[list[tuple[int, str]]],
                      queue: asyncio.Queue, expected: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        faults = self.faults
        sent = dict.fromkeys(range(expected), 0)
        offsets = dict.fromkeys(range(expected), 0)
        finished: dict[int, SimCompletion] = {}
        while len(finished) < expected:
            event, key, payload = await queue.get()
            total = payload.output_tokens if event == "done" else sent[key] + payload
            if total > sent[key]:
                if faults.die_after_chunks is not None and sent[key] >= faults.die_after_chunks:
                    assert request.transport is not None
                    request.transport.abort()  # die like a crashed replica: no end of stream
                    return response
                tokens, text = self.engine.text(sent[key], total - sent[key], self._salt(gen, key))
                await response.write(stream_chunk(gen, [content_choice(gen, key, tokens, text, first=sent[key] == 0,
                                                                       offset=offsets[key])]))
                offsets[key] += len(text)
                sent[key] = total
                if faults.chunk_delay_s:
                    await asyncio.sleep(faults.chunk_delay_s)
            if event == "done":
                finished[key] = payload
                p, i = divmod(key, gen.n)
                await response.write(stream_chunk(gen, [finish_choice(gen, key, lengths[p][i][1])]))
        if gen.include_usage:
            prompt_total = sum(c.prompt_tokens for k, c in finished.items() if k % gen.n == 0)
            cached_total = sum(c.cached_tokens for k, c in finished.items() if k % gen.n == 0)
            completion_total = sum(c.output_tokens for c in finished.values())
            await response.write(stream_chunk(gen, [], usage(prompt_total, completion_total, cached_total)))
        await response.write(STREAM_END)
        await response.write_eof()
        return response
