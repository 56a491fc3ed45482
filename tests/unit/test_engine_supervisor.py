"""The supervisor keeps simulated engines alive (restart with back-off) and drains on stop.

Uses the replica simulator (`thrifty engine sim`) as the supervised process: the
supervision logic is the same for vLLM, which only starts slower.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from thrifty.config import parse_config
from thrifty.engine.supervisor import Supervisor, engine_specs
from tests.realparts import free_port


def sim_config(port: int, replicas: int = 1):
    return parse_config({"tiers": [{
        "name": "small", "model": "sim-small", "aliases": ["gpt-4o-mini"],
        "engine": {"kind": "sim", "sim_profile": "a100-llama3-8b", "base_port": port},
        "price": {"gpu_hour": 1.0}, "replicas": {"count": replicas, "min": 1, "max": 4},
    }]})


async def test_starts_restarts_and_stops() -> None:
    config = sim_config(free_port())
    sup = Supervisor(engine_specs(config, config.tiers[0]), start_timeout_s=60, health_interval_s=0.2, max_backoff_s=1)
    await sup.start()
    try:
        engine = sup.engines[0]
        assert engine.healthy
        first_pid = engine.proc.pid
        os.killpg(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (engine.restarts == 1 and engine.healthy and engine.proc.pid != first_pid):
            await asyncio.sleep(0.2)
        assert engine.restarts == 1
        assert engine.healthy, "restarted engine never became healthy"
    finally:
        await sup.stop(drain_timeout_s=5)
    assert sup.engines[0].proc.returncode is not None


async def test_stop_drains_in_flight_requests() -> None:
    config = sim_config(free_port())
    sup = Supervisor(engine_specs(config, config.tiers[0]), start_timeout_s=60)
    await sup.start()
    url = sup.urls("small")[0]
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 300, "stream": True,
            "ignore_eos": True}

    async def long_stream() -> int:
        chunks = 0
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                    chunks += 1
                if line.strip() == b"data: [DONE]":
                    return chunks
        return -chunks  # the stream was cut before [DONE]

    task = asyncio.create_task(long_stream())
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    await sup.stop(drain_timeout_s=30)
    chunks = await asyncio.wait_for(task, 5)
    assert chunks > 0, "the in-flight stream was cut by the stop"
    assert time.monotonic() - t0 > 0.05
    assert sup.engines[0].proc.returncode is not None


async def test_unhealthy_start_raises() -> None:
    config = sim_config(free_port())
    specs = engine_specs(config, config.tiers[0])
    specs[0].argv = ["python3", "-c", "import time; time.sleep(30)"]
    sup = Supervisor(specs, start_timeout_s=1)
    with pytest.raises(RuntimeError, match="did not become healthy"):
        await sup.start()
