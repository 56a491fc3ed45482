"""`thrifty engine sim` as a process: serves until terminated; bad flags fail with one line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.realparts import free_port, wait_http
from thrifty.sim.server import add_sim_arguments, run_sim


def test_bad_profile_fails_with_one_line(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    assert run_sim(parser.parse_args(["--profile", "tpu-9000"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown simulator profile 'tpu-9000'" in err
    assert run_sim(parser.parse_args(["--time-scale", "0"])) == 2
    assert "--time-scale" in capsys.readouterr().err


def test_sim_process_serves_and_stops() -> None:
    port = free_port()
    code = ("import sys, argparse; from thrifty.sim.server import add_sim_arguments, run_sim; "
            "p = argparse.ArgumentParser(); add_sim_arguments(p); sys.exit(run_sim(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), "--profile", "a100-llama3-8b",
                             "--served-model-name", "llama", "big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
            assert [m["id"] for m in json.load(resp)["data"]] == ["llama", "big"]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "big", "prompt": "hello", "max_tokens": 5, "ignore_eos": True}).encode())
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] == 5
    finally:
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        proc.wait(15)
    assert time.monotonic() - started < 15
    assert b"simulated replica" in proc.stdout.read()
