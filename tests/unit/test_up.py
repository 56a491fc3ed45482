"""`thrifty up --engine sim`: the whole stack on localhost, driven with the openai SDK,
stopped with Ctrl-C (SIGINT) cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import yaml

from tests.realparts import free_port, free_port_block, wait_http

DEMO = Path(__file__).resolve().parents[2] / "thrifty" / "configs" / "local-cpu.yaml"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_openai_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEMO.read_text())
    ports = {name: free_port() for name in ("sidecar", "grpc", "http")}
    raw["listen"] = {"host": "127.0.0.1", "port": ports["sidecar"]}
    raw["controller"] = {"listen_grpc": f"127.0.0.1:{ports['grpc']}", "listen_http": f"127.0.0.1:{ports['http']}"}
    for tier in raw["tiers"]:
        tier["engine"]["base_port"] = free_port_block(tier["replicas"]["max"])
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--config", str(config), "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{ports['sidecar']}/healthz", 120, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['sidecar']}/v1", api_key="k", max_retries=0, timeout=30)
        ids = {m.id for m in client.models.list().data}
        assert {"gpt-4o", "gpt-4o-mini"} <= ids
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert reply.choices[0].message.content
        wait_http(f"http://127.0.0.1:{ports['http']}/healthz", 10)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Point an OpenAI client at" in out
    assert "stopped." in out
    assert "Traceback" not in out
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after Ctrl-C"
