"""A fake OpenAI-compatible replica (no model): fixed answers, controllable faults.

For what cannot run in unit tests or the overhead bench: it answers instantly (or
after `delay_s`), streams `chunks` pieces, exposes vLLM's `/metrics` gauge names from
its own in-flight count, and can hang forever or die mid-stream on demand. Its answers
are shaped like vLLM's (usage, `n` choices, logprobs, tool calls) so the OpenAI SDK
parses them; it is never a stand-in for model behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(slots=True)
class StubBehaviour:
    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0  # between streamed chunks
    chunks: int = 4
    hang: bool = False  # never answer
    die_after_chunks: int | None = None  # abort the connection mid-stream
    fail_status: int | None = None  # answer every request with this error status
    models: tuple[str, ...] = ()  # () accepts any model name


@dataclass(slots=True)
class StubStats:
    requests: int = 0
    inflight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keep_bodies: bool = False


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0}}


class StubBackend:
    def __init__(self, behaviour: StubBehaviour | None = None, name: str = "stub") -> None:
        self.behaviour = behaviour or StubBehaviour()
        self.stats = StubStats()
        self.name = name
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._transports: set[Any] = set()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = self._site = web.TCPSite(self._runner, host, port, backlog=2048)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def kill(self) -> None:
        """Die like a crashed process: stop listening and drop every open connection."""
        if self._site is not None and self._site._server is not None:  # type: ignore[attr-defined]
            self._site._server.close()  # type: ignore[attr-defined]  # stop accepting
        for transport in list(self._transports):
            transport.abort()
        if self._runner is not None and self._runner.server is not None:
            for handler in list(self._runner.server.connections):
                if handler.transport is not None:
                    handler.transport.abort()

    async def _begin(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.stats.requests += 1
        if request.transport is not None:
            self._transports.add(request.transport)
        body = await request.json()
        if self.stats.keep_bodies:
            self.stats.bodies.append(body)
        b = self.behaviour
        if b.models and body.get("model") not in b.models:
            return web.json_response({"error": {"message": f"model {body.get('model')} not served", "type": "NotFoundError",
                                                "param": "model", "code": 404}}, status=404)
        if b.fail_status:
            return web.json_response({"error": {"message": "stub failure", "type": "server_error", "param": None,
                                                "code": b.fail_status}}, status=b.fail_status)
        if b.hang:
            await asyncio.Event().wait()
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.stats.inflight += 1
        try:
            body = await self._begin(request)
            if isinstance(body, web.Response):
                return body
            return await self._answer(request, body, chat=True)
        finally:
            self.stats.inflight -= 1

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.stats.inflight += 1
        try:
            body = await self._begin(request)
            if isinstance(body, web.Response):
                return body
            return await self._answer(request, body, chat=False)
        finally:
            self.stats.inflight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any], *, chat: bool) -> web.StreamResponse:
        b = self.behaviour
        n = int(body.get("n") or 1)
        words = [f"w{i} " for i in range(b.chunks)]
        rid, created, model = f"cmpl-{self.name}-{self.stats.requests}", int(time.time()), body.get("model", "")
        prompt_tokens = len(json.dumps(body.get("messages") or body.get("prompt") or "")) // 4 + 1
        tools = body.get("tools")
        want_logprobs = bool(body.get("logprobs"))
        if not body.get("stream"):
            text = "".join(words)
            choices = []
            for i in range(n):
                if chat:
                    message: dict[str, Any] = {"role": "assistant", "content": text}
                    if tools:
                        fn = tools[0].get("function", {}).get("name", "f")
                        message = {"role": "assistant", "content": None, "tool_calls": [
                            {"id": f"call_{i}", "type": "function", "function": {"name": fn, "arguments": "{}"}}]}
                    lp = {"content": [{"token": w, "logprob": -0.1, "bytes": list(w.encode()), "top_logprobs": []}
                                      for w in words]} if want_logprobs else None
                    choices.append({"index": i, "message": message, "logprobs": lp,
                                    "finish_reason": "tool_calls" if tools else "stop"})
                else:
                    lp = {"tokens": words, "token_logprobs": [-0.1] * len(words), "top_logprobs": None,
                          "text_offset": list(range(len(words)))} if want_logprobs else None
                    choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": "stop"})
            return web.json_response({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                      "created": created, "model": model, "choices": choices,
                                      "usage": _usage(prompt_tokens, len(words) * n)})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        obj = "chat.completion.chunk" if chat else "text_completion"
        for k, w in enumerate(words):
            if b.die_after_chunks is not None and k >= b.die_after_chunks:
                assert request.transport is not None
                request.transport.abort()
                return out
            for i in range(n):
                choice = ({"index": i, "delta": {"role": "assistant", "content": w} if k == 0 else {"content": w},
                           "logprobs": None, "finish_reason": None} if chat
                          else {"index": i, "text": w, "logprobs": None, "finish_reason": None})
                await out.write(b"data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                         "choices": [choice]}).encode() + b"\n\n")
            if b.chunk_delay_s:
                await asyncio.sleep(b.chunk_delay_s)
        for i in range(n):
            end = ({"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"} if chat
                   else {"index": i, "text": "", "logprobs": None, "finish_reason": "stop"})
            await out.write(b"data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                     "choices": [end]}).encode() + b"\n\n")
        opts = body.get("stream_options") or {}
        if opts.get("include_usage"):
            await out.write(b"data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                     "choices": [], "usage": _usage(prompt_tokens, len(words) * n)}).encode() + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._begin(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        return web.json_response({"object": "list", "model": body.get("model"), "usage": _usage(len(items), 0),
                                  "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                           for i in range(len(items))]})

    async def _metrics(self, request: web.Request) -> web.Response:
        running = min(self.stats.inflight, 256)
        text = (f'vllm:num_requests_running{{model_name="{self.name}"}} {running}\n'
                f'vllm:num_requests_waiting{{model_name="{self.name}"}} {self.stats.inflight - running}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{self.name}"}} {min(self.stats.inflight / 256, 1.0)}\n')
        return web.Response(text=text)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _echo(self, request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({"path": request.path_qs, "method": request.method, "body_bytes": len(data),
                                  "backend": self.name})


def main(argv: list[str] | None = None) -> int:
    """`python -m thrifty.sim.stub_backend [--port N] [--delay-ms X]`: serve until killed; prints its URL."""
    import argparse

    p = argparse.ArgumentParser(prog="stub_backend")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=4)
    args = p.parse_args(argv)

    async def serve() -> None:
        backend = StubBackend(StubBehaviour(delay_s=args.delay_ms / 1000, chunks=args.chunks))
        print(await backend.start(port=args.port), flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
