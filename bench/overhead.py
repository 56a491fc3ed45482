"""`thrifty bench overhead`: what the sidecar adds to a request, against a naive aiohttp proxy.

One run, one machine, the same load four ways: straight to a fast stub backend
(a fake replica answering at once), through a plain aiohttp passthrough written here
(the naive-Python reference), through the thrifty sidecar with caches and router
off, and through a second sidecar that is the same but shadows (quality loop on,
`--shadow-rate`, default 1.0: every answer of its cheap tier, streamed or not, is re-asked
of a second, pricier tier on the same stub and judged, after the reply; docs/design/quality.md;
`--shadow-rate 0` is the A/A run that shows this machine's noise band).
The shadowed sidecar's p50 and CPU per client request are reported as ratios to the
plain sidecar's: the shadow call is off the latency path, but its CPU is real work of
that process and counts. Each server runs in its own process, so the sidecar's CPU per request is read
from that process's own CPU time. Background load on a shared machine swings on the
scale of seconds, so the latency samples are paired: concurrency-1 and streaming
requests go to the targets in turn, one request each (rotating who goes first),
and the concurrency-32 blocks alternate target by target in each round. CPU is read per
process over each whole round (each process only works on its own requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

MODEL = "bench-model"
CHAT = json.dumps({"model": MODEL, "max_tokens": 16, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the plot of a short story about a lighthouse keeper in two sentences."}]}).encode()
STREAM = json.dumps({**json.loads(CHAT), "stream": True}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}


# --- the naive reference proxy (runs in its own process) -------------------------------
def serve_plain(port: int, upstream: str) -> None:
    """A straightforward aiohttp passthrough: read body, POST upstream, relay the answer."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        async with session.post(upstream + request.path, data=body, headers={"Content-Type": "application/json"}) as up:
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                out = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
                await out.prepare(request)
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            return web.Response(status=up.status, body=await up.read(), content_type="application/json")

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- processes ---------------------------------------------------------------------------
def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the bench's child processes; kill any still running after 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"thrifty bench overhead: {url} did not come up") from None
                await asyncio.sleep(0.1)


@dataclass
class Target:
    name: str
    url: str
    pid: int | None = None
    c1_ms: list[float] = field(default_factory=list)
    stream_ms: list[float] = field(default_factory=list)
    c32_rps: list[float] = field(default_factory=list)
    requests: int = 0
    cpu_s: float = 0.0


async def _one(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t = time.perf_counter()
    async with http.post(url, data=body, headers=HEADERS) as resp:
        await resp.read()
        if resp.status != 200:
            raise SystemExit(f"thrifty bench overhead: {url} answered {resp.status}")
    return (time.perf_counter() - t) * 1000


async def _round(http: aiohttp.ClientSession, targets: list[Target], n1: int, n32: int, nstream: int) -> None:
    cpu0 = {t.name: _cpu_seconds(t.pid) for t in targets if t.pid}
    for kind, n, body in (("c1", n1, CHAT), ("stream", nstream, STREAM)):
        for i in range(n):
            k = i % len(targets)
            for t in targets[k:] + targets[:k]:
                ms = await _one(http, t.url + "/v1/chat/completions", body)
                (t.c1_ms if kind == "c1" else t.stream_ms).append(ms)
    for t in targets:
        url = t.url + "/v1/chat/completions"
        left = n32
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _one(http, url, CHAT)

        await asyncio.gather(*(worker() for _ in range(32)))
        t.c32_rps.append(n32 / (time.perf_counter() - start))
    for t in targets:
        if t.pid:
            t.cpu_s += _cpu_seconds(t.pid) - cpu0[t.name]
        t.requests += n1 + n32 + nstream


async def run(args: argparse.Namespace) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        stub_port, plain_port, side_port, shadow_port = _free_port(), _free_port(), _free_port(), _free_port()
        py = sys.executable
        procs.append(subprocess.Popen([py, "-m", "thrifty.sim.stub_backend", "--port", str(stub_port)], stdout=subprocess.DEVNULL))
        stub = f"http://127.0.0.1:{stub_port}"
        procs.append(subprocess.Popen([py, "-m", "thrifty.bench.overhead", "--serve-plain", str(plain_port), "--upstream", stub]))
        cfg = {"listen": {"host": "127.0.0.1", "port": side_port},
               "tiers": [{"name": "bench", "model": MODEL, "engine": {"kind": "external"}, "price": {"gpu_hour": 2.0},
                          "replicas": {"urls": [stub]}}],
               "router": {"enabled": False}, "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}}}
        cfg_path = Path(tmp.name) / "bench.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        sidecar_cmd = [py, "-m", "thrifty.proxy.cli", "--config", str(cfg_path), "--log-level", "warning"]
        procs.append(subprocess.Popen(sidecar_cmd, stderr=subprocess.DEVNULL))  # access log on, discarded
        # The same sidecar with a pricier reference tier (the same stub) and shadowing on: the
        # client asks for the cheap tier, so each answer is a shadow candidate.
        shadow_cfg = {**cfg, "listen": {"host": "127.0.0.1", "port": shadow_port},
                      "tiers": cfg["tiers"] + [{"name": "bench-ref", "model": MODEL + "-ref", "engine": {"kind": "external"},
                                                "price": {"gpu_hour": 4.0}, "replicas": {"urls": [stub]}}],
                      "quality": {"shadow": {"rate": args.shadow_rate, "judge": "exact"}}}
        shadow_path = Path(tmp.name) / "shadow.yaml"
        shadow_path.write_text(yaml.safe_dump(shadow_cfg))
        procs.append(subprocess.Popen([py, "-m", "thrifty.proxy.cli", "--config", str(shadow_path), "--log-level", "warning"],
                                      stderr=subprocess.DEVNULL))
        targets = [Target("direct", stub), Target("plain", f"http://127.0.0.1:{plain_port}", procs[1].pid),
                   Target("sidecar", f"http://127.0.0.1:{side_port}", procs[2].pid),
                   Target("shadowed", f"http://127.0.0.1:{shadow_port}", procs[3].pid)]
        for t in targets:
            await _wait_up(t.url + ("/v1/models" if t.name in ("sidecar", "shadowed") else "/health"))
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            await _round(http, targets, 50, 200, 10)  # warm-up: connections, imports, caches
            for t in targets:
                t.c1_ms.clear(), t.stream_ms.clear(), t.c32_rps.clear()
                t.requests, t.cpu_s = 0, 0.0
            shadow0 = await _shadow_counts(http, targets[-1].url)
            for _ in range(args.rounds):
                await _round(http, targets, args.requests // args.rounds, args.requests_c32 // args.rounds,
                             args.streams // args.rounds)
            await asyncio.sleep(0.5)  # the last shadow calls finish
            shadow1 = await _shadow_counts(http, targets[-1].url)
        shadow = {k: shadow1.get(k, 0.0) - shadow0.get(k, 0.0) for k in shadow1}
        return _report(targets, shadow, args.shadow_rate)
    finally:
        stop_processes(procs)
        tmp.cleanup()


async def _shadow_counts(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The shadowed sidecar's shadow calls (ok), skips and verdicts so far, from its /metrics."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _SHADOW_COUNTERS.get(sample.name)
            if key is None or (key == "calls" and sample.labels.get("result") != "ok"):
                continue
            out[key] = out.get(key, 0.0) + sample.value
    return out


_SHADOW_COUNTERS = {"thrifty_shadow_calls_total": "calls", "thrifty_shadow_skipped_total": "skipped",
                    "thrifty_shadow_verdicts_total": "verdicts"}


def _report(targets: list[Target], shadow: dict[str, float], shadow_rate: float) -> dict[str, object]:
    by = {t.name: t for t in targets}
    p50 = {t.name: statistics.median(t.c1_ms) for t in targets}
    sp50 = {t.name: statistics.median(t.stream_ms) for t in targets}
    rps = {t.name: statistics.median(t.c32_rps) for t in targets}
    cpu = {t.name: (t.cpu_s / t.requests * 1000 if t.pid and t.requests else float("nan")) for t in targets}
    print(f"{'target':<10}{'p50 c=1 ms':>12}{'stream p50 ms':>15}{'rps c=32':>10}{'cpu ms/req':>12}")
    for t in targets:
        print(f"{t.name:<10}{p50[t.name]:>12.3f}{sp50[t.name]:>15.3f}{rps[t.name]:>10.0f}{cpu[t.name]:>12.3f}")
    print(f"shadowed / sidecar: p50 c=1 x{p50['shadowed'] / p50['sidecar']:.3f}, cpu/req x{cpu['shadowed'] / cpu['sidecar']:.3f}, "
          f"rps c=32 x{rps['shadowed'] / rps['sidecar']:.3f}; {shadow.get('calls', 0):.0f} shadow calls, "
          f"{shadow.get('skipped', 0):.0f} skipped, {shadow.get('verdicts', 0):.0f} verdicts at rate {shadow_rate} "
          f"(wall-clock figures on a shared machine are noisy: read the ratios, not the digits)")
    added = p50["sidecar"] - p50["direct"]
    plain_added = p50["plain"] - p50["direct"]
    return {
        "added_p50_ms": round(added, 4),
        "plain_added_p50_ms": round(plain_added, 4),
        "ratio_vs_plain": round(added / plain_added, 4) if plain_added > 0 else None,  # type: ignore[dict-item]
        "cpu_ms_per_req": round(cpu["sidecar"], 4),
        "plain_cpu_ms_per_req": round(cpu["plain"], 4),
        "stream_added_p50_ms": round(sp50["sidecar"] - sp50["direct"], 4),
        "plain_stream_added_p50_ms": round(sp50["plain"] - sp50["direct"], 4),
        "rps_c32": round(rps["sidecar"], 1),
        "plain_rps_c32": round(rps["plain"], 1),
        "direct_rps_c32": round(rps["direct"], 1),
        "requests_per_target": by["sidecar"].requests,
        "shadow": {
            "rate": shadow_rate,
            "calls": int(shadow.get("calls", 0)), "skipped": int(shadow.get("skipped", 0)),
            "verdicts": int(shadow.get("verdicts", 0)),
            "p50_ms": round(p50["shadowed"], 4), "p50_ratio": round(p50["shadowed"] / p50["sidecar"], 4),
            "added_p50_ms": round(p50["shadowed"] - p50["direct"], 4),
            "cpu_ms_per_req": round(cpu["shadowed"], 4), "cpu_ratio": round(cpu["shadowed"] / cpu["sidecar"], 4),
            "stream_p50_ratio": round(sp50["shadowed"] / sp50["sidecar"], 4),
            "rps_c32": round(rps["shadowed"], 1), "rps_ratio": round(rps["shadowed"] / rps["sidecar"], 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="thrifty bench overhead", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="non-streaming requests at concurrency 1, per target")
    p.add_argument("--requests-c32", type=int, default=4000, help="non-streaming requests at concurrency 32, per target")
    p.add_argument("--streams", type=int, default=500, help="streaming requests at concurrency 1, per target")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (noise hits every target alike)")
    p.add_argument("--shadow-rate", type=float, default=1.0,
                   help="quality.shadow.rate of the shadowed sidecar (default 1.0: every answer; config default 0.02)")
    p.add_argument("--serve-plain", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--upstream", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 <= args.shadow_rate <= 1:
        p.error("--shadow-rate must be in [0, 1]")
    if args.serve_plain is not None:
        serve_plain(args.serve_plain, args.upstream)
        return 0
    if not Path("/proc/self/stat").exists():
        print("thrifty bench overhead: needs /proc to read per-process CPU time", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
