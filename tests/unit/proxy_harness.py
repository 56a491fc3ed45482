"""Shared set-up for the sidecar tests: stub replicas on loopback and a sidecar in front."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thrifty.config import Config, parse_config
from thrifty.proxy.levers.protocol import Levers
from thrifty.proxy.app import Listener, Sidecar, bound_port, serve
from thrifty.sim.stub_backend import StubBackend, StubBehaviour


def config_for(tiers: dict[str, list[str]], **extra: Any) -> Config:
    """Tiers named in `tiers` (cheapest first) with the given replica URLs."""
    data: dict[str, Any] = {
        "tiers": [
            {"name": name, "model": f"{name}-model", "aliases": [f"alias-{name}"],
             "engine": {"kind": "external", "max_num_seqs": 512},
             "price": {"input_per_1m": 0.1 * (i + 1) ** 2, "output_per_1m": 0.4 * (i + 1) ** 2},
             "replicas": {"count": len(urls), "min": 1, "max": 8, "urls": urls}}
            for i, (name, urls) in enumerate(tiers.items())
        ],
        "router": {"enabled": False},
        "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}},
        # off unless a test asks: its random draws (control group, shadow calls) would make counts flaky
        "quality": {"enabled": False},
    }
    data.update(extra)
    return parse_config(data)


@dataclass
class Stack:
    sidecar: Sidecar
    runner: Listener
    url: str
    backends: list[StubBackend]


@asynccontextmanager
async def stack(behaviours: list[StubBehaviour], *, tiers: list[str] | None = None, levers: Levers | None = None,
                scrape_interval_s: float = 0.1, **config_extra: Any) -> AsyncIterator[Stack]:
    """Stub replicas (one per behaviour; spread over `tiers` round-robin) behind one sidecar."""
    names = tiers or ["small"]
    backends = [StubBackend(b, name=f"b{i}") for i, b in enumerate(behaviours)]
    urls = [await b.start() for b in backends]
    by_tier: dict[str, list[str]] = {n: [] for n in names}
    for i, url in enumerate(urls):
        by_tier[names[i % len(names)]].append(url)
    sidecar = Sidecar(config_for(by_tier, **config_extra), levers=levers, scrape_interval_s=scrape_interval_s)
    runner = await serve(sidecar, "127.0.0.1", 0)
    try:
        yield Stack(sidecar, runner, f"http://127.0.0.1:{bound_port(runner)}", backends)
    finally:
        await runner.cleanup()
        for b in backends:
            await b.stop()


@asynccontextmanager
async def bare_sidecar_process(tmp_path: Path, start_timeout_s: float = 30) -> AsyncIterator[tuple[subprocess.Popen[str], int]]:
    """A real `thrifty proxy` process (no levers, no access log) in front of an unreachable
    replica: for the tests that watch a sidecar's own memory. Yields (process, port)."""
    cfg = {"tiers": [{"name": "small", "model": "small-model", "engine": {"kind": "external"},
                      "price": {"gpu_hour": 1.0}, "replicas": {"urls": ["http://127.0.0.1:9"]}}],
           "router": {"enabled": False}, "cache": {"exact": {"enabled": False}, "semantic": {"enabled": False}}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "thrifty.proxy.cli", "--config", str(path), "--port", "0",
                             "--no-access-log"], stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = None
        deadline = time.monotonic() + start_timeout_s
        while port is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stderr.readline)  # type: ignore[union-attr]
            if not line:
                break
            if '"listening"' in line:
                port = json.loads(line)["port"]
        assert port, "sidecar did not start"
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
