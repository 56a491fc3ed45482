"""`thrifty up --engine sim` runs the one control path: the controller learns each tier's
capacity from the engines' served-token counters and reports the speculative tier's
acceptance from the replicas' vLLM spec-decode counters, both scraped by the real sidecar
and carried by telemetry (no bench-only probe in between)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import yaml

from tests.realparts import free_port, free_port_block, wait_http
from thrifty.up import DEFAULT_SIM_CONFIG


def _fleet(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_up_sim_fleet_api_shows_learned_capacity_and_spec_acceptance(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_SIM_CONFIG.read_text())
    ports = {name: free_port() for name in ("sidecar", "grpc", "http")}
    raw["listen"] = {"host": "127.0.0.1", "port": ports["sidecar"]}
    raw["controller"] = {"listen_grpc": f"127.0.0.1:{ports['grpc']}", "listen_http": f"127.0.0.1:{ports['http']}",
                         "interval_s": 2}
    raw["router"] = {"enabled": False}  # requests go to the tier they name
    raw["cache"] = {"exact": {"enabled": False}, "semantic": {"enabled": False}}  # every request reaches an engine
    for tier in raw["tiers"]:
        tier["engine"]["base_port"] = free_port_block(tier["replicas"]["max"])
    assert any(t["engine"].get("speculative") for t in raw["tiers"] if t["name"] == "large")
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--config", str(config),
         "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['sidecar']}/v1", api_key="k", max_retries=0,
                               timeout=30)
        i = 0
        while not stop.is_set():
            i += 1
            try:
                client.chat.completions.create(
                    model="gpt-4o", max_tokens=64, temperature=0,
                    messages=[{"role": "user", "content": f"count to twenty, request {i} " + "one two three " * 20}])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                time.sleep(0.5)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    large: dict = {}
    try:
        wait_http(f"http://127.0.0.1:{ports['sidecar']}/healthz", 120, proc)
        wait_http(f"http://127.0.0.1:{ports['http']}/healthz", 30, proc)
        token_file = tmp_path / "logs" / "controller.token"
        for _ in range(100):
            if token_file.exists() and token_file.read_text().strip():
                break
            time.sleep(0.1)
        token = token_file.read_text().strip()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fleet = _fleet(f"http://127.0.0.1:{ports['http']}/api/v1/fleet", token)
            large = next(t for t in fleet["tiers"] if t["name"] == "large")
            if large["capacity_tokens_s"] and large["spec_acceptance"]:
                break
            time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=35)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert large.get("capacity_tokens_s"), (large, out[-3000:], errors[:3])
    assert large.get("spec_acceptance"), (large, out[-3000:], errors[:3])
    # The sim's n-gram drafts are accepted at its configured rate (0.6 per token): a ratio, not a count.
    assert 0.05 < large["spec_acceptance"] < 1.0
    assert not errors, errors[:3]
    assert proc.returncode == 0, out[-3000:]
