"""`thrifty bench batch --trace FILE`: a Batch API job mixed into interactive traffic, across a sidecar restart.

Two runs on the same window of a real trace, each on fresh simulated replicas
(`thrifty.sim` SimServer with a GPU profile's timing, sped up by `--time-scale`) behind
one real sidecar (the real request path, admission lanes and Batch API runner):
- `interactive`: the trace's requests only (streamed chat, the trace's prompt and output
  lengths); the baseline;
- `mixed`: the same requests plus one batch job of `--batch-size` lines (prompt and output
  lengths drawn from the same trace), submitted at the start through `/v1/files` and
  `/v1/batches`; at `--restart-at` of the window the sidecar is restarted as Kubernetes
  rolls a pod: the old one stops its batch runner (lines in flight are cut off and run
  again by its successor) and its listening socket, a new one starts on the same batch
  store and port, and the old one drains the interactive requests it has in flight
  (`listen.drain_s`); a client refused in between retries, and the wait counts in its TTFT.
Reported per run: interactive SLO attainment (TTFT <= `--slo-ttft-s`, in simulated
seconds), replica utilisation over the window (share of samples with a request running,
and mean running sequences / max_num_seqs), and for the batch: lines completed, lost
(input ids with no output or error line), duplicated (ids answered twice), when it
finished, and its marginal cost per 1,000 lines (GPU-hours the replicas ran past the
interactive window to finish it, at the profile's price; 0 when it fit in the troughs).
JSON (last line): `interactive`, `mixed` (same keys), `batch`, `utilisation_gain` (mixed / interactive occupancy).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import random
import re
import socket
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from thrifty.config import parse_config
from thrifty.profiles import get_profile
from thrifty.sim.fleet import TraceError, TraceRequest
from thrifty.sim.traces import load_trace
from thrifty.sim.server import running_sim_server

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "data" / "traces" / "azure_conv_2023.csv"
MODEL = "bench-model"
_RUNNING = re.compile(r"^vllm:num_requests_running(?:\{[^}]*\})? ([0-9.e+]+)$", re.MULTILINE)


@dataclass(slots=True)
class Utilisation:
    samples: int = 0
    busy: int = 0  # replica-samples with a request running
    running: float = 0.0  # summed running sequences

    def fraction(self) -> float:
        return self.busy / self.samples if self.samples else 0.0


@dataclass(slots=True)
class RunResult:
    ttft_s: list[float] = field(default_factory=list)  # simulated seconds, interactive requests
    errors: int = 0
    util: Utilisation = field(default_factory=Utilisation)
    batch: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="thrifty bench batch", description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="trace: Azure CSV or Mooncake JSONL (thrifty.sim.traces)")
    p.add_argument("--offset-min", type=float, default=0.0, help="start of the window in the trace (minutes)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the interactive window (simulated minutes)")
    p.add_argument("--profile", default="a100-llama3-8b", help="simulator profile of the replicas")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--time-scale", type=float, default=20.0, help="simulated seconds per wall second")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64, help="batch.concurrency of the sidecar")
    p.add_argument("--slo-ttft-s", type=float, default=2.0)
    p.add_argument("--restart-at", type=float, default=0.5, help="restart the sidecar at this share of the window (<0: never)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="prompts are cut to this many tokens")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("minutes", "time_scale"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.replicas < 1 or args.batch_size < 1:
        p.error("--replicas and --batch-size must be >= 1")
    return args


def window(trace: list[TraceRequest], offset_s: float, length_s: float) -> list[TraceRequest]:
    return [TraceRequest(r.arrival - offset_s, r.prompt_tokens, r.output_tokens) for r in trace
            if offset_s <= r.arrival < offset_s + length_s]


def prompt_text(tag: str, tokens: int) -> str:
    """About `tokens` simulated tokens (four characters each), unique from its first block."""
    filler = "lorem ipsum dolor sit amet " * (tokens // 6 + 1)
    return (f"{tag} " + filler)[: 4 * tokens]


def batch_lines(trace: list[TraceRequest], n: int, max_prompt: int, rng: random.Random) -> bytes:
    out = []
    for i in range(n):
        r = rng.choice(trace)
        body = {"model": MODEL, "max_tokens": r.output_tokens, "ignore_eos": True,
                "messages": [{"role": "user", "content": prompt_text(f"batch {i}", min(r.prompt_tokens, max_prompt))}]}
        out.append(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(out) + "\n").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sample_utilisation(http: aiohttp.ClientSession, urls: list[str], util: Utilisation, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for url in urls:
            try:
                async with http.get(url + "/metrics") as resp:
                    text = await resp.text()
            except aiohttp.ClientError:
                continue
            running = sum(float(m) for m in _RUNNING.findall(text))
            util.samples += 1
            util.busy += running > 0
            util.running += running
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def interactive_request(http: aiohttp.ClientSession, base: str, i: int, r: TraceRequest, args: argparse.Namespace,
                              result: RunResult) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": r.output_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": prompt_text(f"request {i}", min(r.prompt_tokens, args.max_prompt_tokens))}]}
    started = time.monotonic()
    for _ in range(200):  # a restarting sidecar refuses connections for a moment: retry, the wait counts
        try:
            async with http.post(base + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer bench"}) as resp:
                if resp.status != 200:
                    result.errors += 1
                    return
                first = None
                async for _chunk in resp.content.iter_any():
                    if first is None:
                        first = time.monotonic()
                result.ttft_s.append(((first or time.monotonic()) - started) * args.time_scale)
                return
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError):
            await asyncio.sleep(0.02)  # cut off by the restart, or refused while it happens: ask again
    result.errors += 1


async def submit_batch(http: aiohttp.ClientSession, base: str, content: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(content), filename="batch.jsonl", content_type="application/jsonl")
    headers = {"Authorization": "Bearer bench"}
    async with http.post(base + "/v1/files", data=form, headers=headers) as resp:
        file_id = (await resp.json())["id"]
    async with http.post(base + "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                      "completion_window": "24h"}, headers=headers) as resp:
        return (await resp.json())["id"]


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    for _ in range(200):
        try:
            async with http.get(url, headers={"Authorization": "Bearer bench"}) as resp:
                if resp.status == 200:
                    return await resp.json(content_type=None)
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no answer from {url}")


async def file_lines(http: aiohttp.ClientSession, base: str, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    for _ in range(100):
        try:
            async with http.get(f"{base}/v1/files/{file_id}/content", headers={"Authorization": "Bearer bench"}) as resp:
                text = await resp.text()
                return [json.loads(line) for line in text.splitlines() if line]
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise RuntimeError("could not read the batch output")


async def run(args: argparse.Namespace, trace: list[TraceRequest], *, with_batch: bool) -> RunResult:
    from thrifty.proxy.app import Sidecar, serve

    profile = get_profile(args.profile)
    result = RunResult()
    store = Path(tempfile.mkdtemp(prefix="thrifty-bench-batch-")) / "batch.sqlite"
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(running_sim_server(args.profile, served_model_names=[MODEL], seed=i,
                                                                   time_scale=args.time_scale))
                for i in range(args.replicas)]
        config = parse_config({
            "tiers": [{"name": "gpu", "model": MODEL, "engine": {"kind": "external", "max_num_seqs": profile.max_num_seqs},
                       "price": {"gpu_hour": profile.gpu_hour_usd or 1.0},
                       "replicas": {"count": len(urls), "urls": urls}}],
            "router": {"enabled": False}, "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}},
            "slo": {"ttft_p95_ms": args.slo_ttft_s * 1000 / args.time_scale},  # the sidecar lives on the wall clock
            "batch": {"store": str(store), "concurrency": args.concurrency} if with_batch else {},
        })
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        sidecar = Sidecar(config, scrape_interval_s=0.05)
        listener = await serve(sidecar, "127.0.0.1", port)
        drains: list[asyncio.Task[None]] = []
        http = await stack.enter_async_context(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=3600)))
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_utilisation(http, urls, result.util, stop))
        expected = args.batch_size
        batch_id = await submit_batch(http, base, batch_lines(trace, expected, args.max_prompt_tokens,
                                                               random.Random(args.seed))) if with_batch else None
        started = time.monotonic()
        window_wall = args.minutes * 60 / args.time_scale
        restart_wall = args.restart_at * window_wall if with_batch and args.restart_at >= 0 else None
        tasks = []
        for i, r in enumerate(trace):
            at = r.arrival / args.time_scale
            now = time.monotonic() - started
            if restart_wall is not None and at >= restart_wall:
                await asyncio.sleep(max(0.0, restart_wall - now))
                # A rolling restart mid-batch, as Kubernetes does it (SIGTERM): the old sidecar stops its
                # batch runner (lines in flight are cut off: they stay `running` and the successor runs
                # them again) and its listening socket, its successor starts on the same port and store,
                # and the old one drains its interactive requests in flight (listen.drain_s).
                assert sidecar.batch_runner is not None
                await sidecar.batch_runner.stop()
                listener.stop_listening()
                old = listener
                sidecar = Sidecar(config, scrape_interval_s=0.05)
                listener = await serve(sidecar, "127.0.0.1", port)
                drains.append(asyncio.create_task(old.cleanup(grace_s=config.listen.drain_s)))
                restart_wall = None
                now = time.monotonic() - started
            if at > now:
                await asyncio.sleep(at - now)
            tasks.append(asyncio.create_task(interactive_request(http, base, i, r, args, result)))
        await asyncio.sleep(max(0.0, window_wall - (time.monotonic() - started)))
        stop.set()
        await sampler
        await asyncio.gather(*tasks, *drains)
        if batch_id is not None:
            deadline = time.monotonic() + 20 * window_wall + 60
            while True:
                batch = await get_json(http, f"{base}/v1/batches/{batch_id}")
                if batch["status"] in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            finished_sim = (time.monotonic() - started) * args.time_scale
            lines = await file_lines(http, base, batch.get("output_file_id")) + await file_lines(http, base, batch.get("error_file_id"))
            ids = [line["custom_id"] for line in lines]
            extra_h = max(0.0, finished_sim - args.minutes * 60) / 3600 * args.replicas
            ok = sum(1 for line in lines if (line.get("response") or {}).get("status_code") == 200)
            result.batch = {
                "status": batch["status"], "lines": expected, "completed": ok, "failed": len(lines) - ok,
                "lost": len({f"line-{i}" for i in range(expected)} - set(ids)), "duplicated": len(ids) - len(set(ids)),
                "finished_after_s": round(finished_sim, 1), "restarts": int(args.restart_at >= 0),
                "marginal_gpu_hours": round(extra_h, 4),
                "cost_per_1k_usd": round(extra_h * (profile.gpu_hour_usd or 1.0) / (expected / 1000), 4),
            }
        await listener.cleanup()
    return result


def summary(result: RunResult, args: argparse.Namespace, max_num_seqs: int) -> dict[str, Any]:
    ttft = sorted(result.ttft_s)
    n = len(ttft)
    return {
        "requests": n + result.errors, "errors": result.errors,
        "slo_attainment": round(sum(t <= args.slo_ttft_s for t in ttft) / (n + result.errors), 4) if n + result.errors else 0.0,
        "ttft_p95_s": round(ttft[min(n - 1, int(0.95 * n))], 3) if n else None,
        "busy_fraction": round(result.util.fraction(), 4),
        "occupancy": round(result.util.running / result.util.samples / max_num_seqs, 4) if result.util.samples else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # replicas logging clients the restart cut off
    try:
        trace = window(load_trace(args.trace), args.offset_min * 60, args.minutes * 60)
    except TraceError as exc:
        print(f"thrifty bench batch: {exc}", file=sys.stderr)
        return 2
    if not trace:
        print(f"thrifty bench batch: {args.trace}: no requests in the window", file=sys.stderr)
        return 2
    max_seqs = get_profile(args.profile).max_num_seqs
    alone = summary(asyncio.run(run(args, trace, with_batch=False)), args, max_seqs)
    mixed_result = asyncio.run(run(args, trace, with_batch=True))
    mixed = summary(mixed_result, args, max_seqs)
    gain = round(mixed["occupancy"] / alone["occupancy"], 3) if alone["occupancy"] else None
    print(f"{'run':<12} {'requests':>8} {'SLO':>7} {'TTFT p95':>9} {'busy':>6} {'occupancy':>9}")
    for name, row in (("interactive", alone), ("mixed", mixed)):
        print(f"{name:<12} {row['requests']:>8} {row['slo_attainment']:>7.4f} {row['ttft_p95_s'] or 0:>8.3f}s "
              f"{row['busy_fraction']:>6.3f} {row['occupancy']:>9.4f}")
    b = mixed_result.batch
    print(f"batch: {b['completed']}/{b['lines']} completed, {b['failed']} failed, {b['lost']} lost, {b['duplicated']} "
          f"duplicated, across {b['restarts']} sidecar restart(s); finished after {b['finished_after_s']} s; "
          f"marginal cost ${b['cost_per_1k_usd']} per 1k lines; occupancy x{gain}")
    print(json.dumps({"interactive": alone, "mixed": mixed, "batch": b, "utilisation_gain": gain}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
