"""`thrifty up --engine sim --shared-cache`: a local redis-server and two sidecars sharing it;
an answer cached through one sidecar is an exact hit on the other; Ctrl-C stops all of it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from tests.realparts import free_port_block, wait_http
from thrifty.proxy.levers.shared.local_server import redis_server_binary

DEMO = Path(__file__).resolve().parents[2] / "thrifty" / "configs" / "local-cpu.yaml"
pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed (Debian package redis-server)")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_shared_cache_two_sidecars_share_answers(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEMO.read_text())
    port = free_port_block(2)
    raw["listen"] = {"host": "127.0.0.1", "port": port}
    for tier in raw["tiers"]:
        tier["engine"]["base_port"] = free_port_block(tier["replicas"]["max"])
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(raw))
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--config", str(config), "--log-dir", str(logs),
         "--no-controller", "--shared-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port + 1}/healthz", 120, proc)
        ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the capital of France?"}],
               "max_tokens": 8, "temperature": 0}
        one, two = (openai.OpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key="demo-key", max_retries=0, timeout=30) for p in (port, port + 1))
        first = one.chat.completions.with_raw_response.create(**ask)
        assert first.headers.get("x-thrifty-cache") is None
        time.sleep(1.0)  # the store's background write to Redis
        second = two.chat.completions.with_raw_response.create(**ask)
        assert second.headers.get("x-thrifty-cache") == "exact"
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        redis_port = int(yaml.safe_load((logs / "sidecar-2.yaml").read_text())["cache"]["shared"]["url"].split(":")[2].split("/")[0])
        assert port_open(redis_port)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "shared cache:" in out and "stopped." in out and "Traceback" not in out
    for p in (port, port + 1, redis_port):
        assert not port_open(p), f"port {p} still open after Ctrl-C"
