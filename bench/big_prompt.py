"""A 6 MB prompt must not stall the sidecar: latency of a short request sent meanwhile, and RSS.

Starts a stub backend (a fake replica answering at once) and a `thrifty proxy` with the
real levers on (MiniLM embeddings, semantic cache, router), then sends `--big` prompts of
`--mb` megabytes at once and, while they are in flight, short requests one after the
other. Prints a table, then one JSON line: the short requests' worst latency, the big
ones' latency, and the sidecar's RSS before and at its peak (sampled every 50 ms).
Run: `python -m thrifty.bench.big_prompt [--mb 6.2] [--big 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from thrifty.bench.overhead import _free_port, _wait_up, stop_processes


def _rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024  # type: ignore[union-attr]


def _chat(text: str, model: str = "large-model") -> bytes:
    return json.dumps({"model": model, "temperature": 0, "max_tokens": 8,
                       "messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]}).encode()


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int]:
    t = time.perf_counter()
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        return time.perf_counter() - t, resp.status


async def run(args: argparse.Namespace) -> dict[str, float]:
    procs: list[subprocess.Popen[bytes]] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        stub_port, side_port = _free_port(), _free_port()
        py = sys.executable
        procs.append(subprocess.Popen([py, "-m", "thrifty.sim.stub_backend", "--port", str(stub_port)], stdout=subprocess.DEVNULL))
        stub = f"http://127.0.0.1:{stub_port}"
        cfg = {"listen": {"host": "127.0.0.1", "port": side_port},
               "tiers": [{"name": "small", "model": "small-model", "engine": {"kind": "external"}, "price": {"gpu_hour": 1.0},
                          "replicas": {"urls": [stub]}},
                         {"name": "large", "model": "large-model", "engine": {"kind": "external"}, "price": {"gpu_hour": 8.0},
                          "replicas": {"urls": [stub]}}],
               "router": {"enabled": True}, "cache": {"exact": {"enabled": True}, "semantic": {"enabled": True}}}
        cfg_path = Path(tmp.name) / "big.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        procs.append(subprocess.Popen([py, "-m", "thrifty.proxy.cli", "--config", str(cfg_path), "--log-level", "warning",
                                       "--no-access-log"]))
        side = procs[-1].pid
        await _wait_up(f"{stub}/health")
        await _wait_up(f"http://127.0.0.1:{side_port}/v1/models", timeout=120)
        url = f"http://127.0.0.1:{side_port}/v1/chat/completions"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            for i in range(5):  # warm-up: the encoder loads on first use
                await _post(http, url, _chat(f"warm-up question number {i}?"))
            quiet = [(await _post(http, url, _chat(f"what is {i} plus {i}?")))[0] for i in range(5)]
            rss_before = _rss_mb(side)
            peak = rss_before
            words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
            big_text = (words * int(args.mb * 1e6 / len(words) + 1))[: int(args.mb * 1e6)]
            bigs = [asyncio.create_task(_post(http, url, _chat(f"{k} {big_text}"))) for k in range(args.big)]
            await asyncio.sleep(0.3)  # the big bodies are in (or on their way)
            short: list[float] = []
            statuses: list[int] = []
            while not all(b.done() for b in bigs) or len(short) < 3:
                t, status = await _post(http, url, _chat(f"is {len(short)} an even number?"))
                short.append(t)
                statuses.append(status)
                peak = max(peak, _rss_mb(side))
                if len(short) > 200:
                    break
            sampler_end = time.monotonic() + 1.0
            while time.monotonic() < sampler_end:
                peak = max(peak, _rss_mb(side))
                await asyncio.sleep(0.05)
            big_results = [await b for b in bigs]
        return {
            "prompt_mb": args.mb,
            "big_prompts": args.big,
            "short_quiet_p50_s": round(sorted(quiet)[len(quiet) // 2], 4),
            "short_max_s_during_big": round(max(short), 4),
            "short_requests_during_big": len(short),
            "short_statuses_ok": all(s == 200 for s in statuses),
            "big_max_s": round(max(t for t, _ in big_results), 3),
            "big_statuses": sorted({s for _, s in big_results}),
            "rss_before_mb": round(rss_before, 1),
            "rss_peak_mb": round(peak, 1),
        }  # type: ignore[return-value]
    finally:
        stop_processes(procs)
        tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m thrifty.bench.big_prompt", description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=6.2, help="size of each big prompt in MB (under the 8 MiB body limit)")
    p.add_argument("--big", type=int, default=1, help="big prompts sent at once")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key:<28}{value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
