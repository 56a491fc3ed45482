"""A fake OpenAI-compatible replica (no model): fixed answers at once, controllable faults.

Contract: `StubBackend(StubBehaviour(...), name=...)`; `await start()` returns its URL,
`stop()` shuts it down, `kill()` dies like a crashed process (drops every connection);
`stats` counts requests, in-flight requests and (with `keep_bodies`) the bodies. It is the
simulator's server in instant mode (`SimServer.instant`): the same request parsing and
answer shapes (usage, `n` choices, logprobs, tool calls) as the performance-modelled
replica, each choice reading "w0 w1 ..." (`chunks` tokens, one streamed chunk each), and
vLLM's `/metrics` gauges following its in-flight count. Why: what cannot run a model in unit
tests or `thrifty bench overhead`; it is never a stand-in for model behaviour.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from thrifty.sim.http_server import Faults, ServerStats, SimServer


@dataclass(slots=True)
class StubBehaviour:
    delay_s: float = 0.0  # before the first byte
    chunk_delay_s: float = 0.0  # between streamed chunks
    chunks: int = 4  # tokens per choice, one streamed chunk each
    hang: bool = False  # never answer
    die_after_chunks: int | None = None  # abort the connection mid-stream
    fail_status: int | None = None  # answer every request with this error status
    models: tuple[str, ...] = ()  # () accepts any model name

    def faults(self) -> Faults:
        return Faults(delay_s=self.delay_s, chunk_delay_s=self.chunk_delay_s, hang=self.hang,
                      die_after_chunks=self.die_after_chunks, fail_status=self.fail_status)


class StubBackend:
    """One instant `SimServer` on loopback, with the lifecycle the tests and the overhead bench use."""

    def __init__(self, behaviour: StubBehaviour | None = None, name: str = "stub") -> None:
        self.behaviour = behaviour or StubBehaviour()
        self.name = name
        self.server = SimServer.instant(self.behaviour.chunks, name=name, served_model_names=list(self.behaviour.models),
                                        faults=self.behaviour.faults())
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.url = ""

    @property
    def stats(self) -> ServerStats:
        return self.server.stats

    def app(self) -> web.Application:
        return self.server.app()

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
        transports: list[Any] = list(self.server.transports)
        for transport in transports:
            transport.abort()
        if self._runner is not None and self._runner.server is not None:
            for handler in list(self._runner.server.connections):
                if handler.transport is not None:
                    handler.transport.abort()


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
