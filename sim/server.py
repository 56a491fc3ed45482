"""`thrifty engine sim`: serve a simulated vLLM replica (OpenAI API + `vllm:` metrics).

This module stays light (argparse only at import) so `thrifty --help` is fast; the
aiohttp server lives in `thrifty.sim.http_server` and is imported when it is run.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from thrifty.profiles import PROFILES, get_profile
from thrifty.sim.model import SpeculativeSim

if TYPE_CHECKING:
    from thrifty.sim.http_server import Faults


# --------------------------------------------------------------------- running it
def _speculative(tokens: int, acceptance: float) -> SpeculativeSim | None:
    return SpeculativeSim(tokens, acceptance) if tokens > 0 else None


@asynccontextmanager
async def running_sim_server(profile: str = "cpu-smollm2-135m", *, model: str | None = None,
                             served_model_names: list[str] | None = None, kv_blocks: int | None = None,
                             speculative: SpeculativeSim | None = None, seed: int = 0, time_scale: float = 1.0,
                             host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None) -> AsyncIterator[str]:
    """Serve a simulated replica in this event loop; yields its base URL (http://host:port)."""
    from aiohttp import web

    from thrifty.sim.http_server import SimServer

    server = SimServer(get_profile(profile), model=model, served_model_names=served_model_names, kv_blocks=kv_blocks,
                       speculative=speculative, seed=seed, time_scale=time_scale, faults=faults)
    runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000, vLLM's)")
    parser.add_argument("--profile", default="cpu-smollm2-135m",
                        help="performance profile: " + ", ".join(sorted(PROFILES)) + " (default cpu-smollm2-135m)")
    parser.add_argument("--model", default=None, help="model name reported by the API (default: the profile's model)")
    parser.add_argument("--served-model-name", nargs="+", default=None, dest="served_model_name",
                        help="names clients may use for the model (default: --model)")
    parser.add_argument("--kv-blocks", type=int, default=None, help="KV-cache blocks of 16 tokens (default: the profile's)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context limit (default: the profile's)")
    parser.add_argument("--speculative-tokens", type=int, default=0, help="draft tokens per step; 0 = no speculative decoding")
    parser.add_argument("--acceptance-rate", type=float, default=0.7, help="per-token draft acceptance rate (default 0.7)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="run the model this many times faster than real time")
    parser.add_argument("--seed", type=int, default=0, help="seed for output lengths and acceptance jitter")


def run_sim(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; bad flags get one line on stderr and exit status 2."""
    from aiohttp import web

    from thrifty.sim.http_server import SimServer

    try:
        profile = get_profile(args.profile)
        speculative = _speculative(args.speculative_tokens, args.acceptance_rate)
        if args.kv_blocks is not None and args.kv_blocks < 1:
            raise ValueError("--kv-blocks must be >= 1")
        if args.time_scale <= 0:
            raise ValueError("--time-scale must be > 0")
        if args.speculative_tokens < 0:
            raise ValueError("--speculative-tokens must be >= 0")
        server = SimServer(profile, model=args.model, served_model_names=args.served_model_name,
                           kv_blocks=args.kv_blocks, speculative=speculative, seed=args.seed,
                           time_scale=args.time_scale, max_model_len=args.max_model_len)
    except ValueError as exc:
        print(f"thrifty engine sim: {exc}", file=sys.stderr)
        return 2
    print(f"simulated replica ({profile.name}, model {server.model_name}) on http://{args.host}:{args.port}/v1",
          flush=True)
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None, handler_cancellation=True)
    except OSError as exc:
        print(f"thrifty engine sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
