"""`thrifty up --engine sim`: the whole stack on localhost, driven with the openai SDK,
stopped with Ctrl-C (SIGINT) cleanly; busy ports fail fast; secrets stay off argv and the console."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import yaml

from tests.realparts import free_port, free_port_block, wait_http
from thrifty.up import apply_port_base, busy_ports

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
        env={**os.environ, "THRIFTY_CONTROLLER_TOKEN": "-a-token-that-parses-as-a-flag"},  # argv would break on it
    )
    try:
        wait_http(f"http://127.0.0.1:{ports['sidecar']}/healthz", 120, proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['sidecar']}/v1", api_key="k", max_retries=0, timeout=30)
        ids = {m.id for m in client.models.list().data}
        assert {"gpt-4o", "gpt-4o-mini"} <= ids
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert reply.choices[0].message.content
        wait_http(f"http://127.0.0.1:{ports['http']}/healthz", 10)
        token_file = tmp_path / "logs" / "controller.token"
        for _ in range(50):
            if token_file.exists():
                break
            time.sleep(0.1)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token == "-a-token-that-parses-as-a-flag"
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert token not in cmdline.read_bytes().decode(errors="replace"), f"token on a command line: {cmdline}"
            except OSError:
                continue
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Point an OpenAI client at" in out
    assert "stopped." in out
    assert "Traceback" not in out
    assert token not in out
    console = re.search(r"console: (\S+) tui --controller (\S+) --token-file (\S+)", out)
    assert console and Path(console.group(3)) == token_file, out
    assert console.group(1).endswith("thrifty") and console.group(2) == f"http://127.0.0.1:{ports['http']}"
    assert re.search(r"\[1/4\] starting engines: .*\n\s+done in \d+ s", out), out
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after Ctrl-C"


def test_port_base_moves_every_port_of_the_stack() -> None:
    raw = apply_port_base(yaml.safe_load(DEMO.read_text()), 18000)
    assert raw["listen"]["port"] == 18000
    assert raw["controller"] == {"listen_http": "127.0.0.1:18090", "listen_grpc": "127.0.0.1:18091"}
    assert [t["engine"]["base_port"] for t in raw["tiers"]] == [18100, 18200]


def test_busy_port_fails_fast_and_names_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert busy_ports([("sidecar", "127.0.0.1", port)]) == [f"127.0.0.1:{port} (sidecar)"]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--port", str(port), "--log-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (sidecar)" in result.stderr and "--port-base" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30  # nothing was started
    assert not list(tmp_path.iterdir())
