"""`thrifty up --engine sim --observe`: the real Prometheus (Debian's `prometheus`) it starts
scrapes the stack with the project's rules loaded, and after a few requests every `thrifty_*`
metric docs/metrics.md documents for the sidecar and the controller has a series there."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realparts import REPO, free_port_block, missing, wait_http

METRICS_DOC = REPO / "docs" / "metrics.md"
# Counted per event with labels that only exist once it happens: a few healthy requests on a
# quiet simulated fleet raise no escalation, scaling action or drift alert, and `thrifty up`
# runs no Kubernetes Deployment to read ready replicas from. For these the scrape must still
# carry the family (HELP/TYPE, as Prometheus' metadata API shows); every other one needs a series.
EVENT_ONLY = {"thrifty_escalations_total", "thrifty_controller_scale_actions_total", "thrifty_controller_drift_alerts",
              "thrifty_controller_drift_alerts_total", "thrifty_controller_ready_replicas",
              "thrifty_controller_telemetry_rejected_total", "thrifty_batch_lines_total"}
# Exported only where their feature is configured, which `thrifty up --engine sim` does not:
# KV-event indexes (replicas that publish vLLM KV-cache events) and the Redis shared cache tier.
FEATURE_ONLY_PREFIXES = ("thrifty_kv_index_", "thrifty_shared_cache_",
                         # the quality loop's: they need shadow verdicts or feedback (2% of the requests a
                         # cheaper tier answers), which this stack's few requests may not draw; the loop's
                         # metrics are checked in tests/unit/test_quality_*.py and tests/engine/test_quality_loop_vllm.py
                         "thrifty_shadow_", "thrifty_quality_retained", "thrifty_feedback_total", "thrifty_cache_false_hit_rate",
                         "thrifty_controller_quality_", "thrifty_controller_ledger_")


def documented_metrics(sections: tuple[str, ...] = ("Sidecar", "Controller")) -> list[str]:
    """The metric names in the doc's tables under the `## <section>` headings."""
    names: list[str] = []
    current = None
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].split()[0]
        elif current in sections and (m := re.match(r"\| `(thrifty_[a-z0-9_]+)`", line)):
            names.append(m.group(1))
    return names


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _post(url: str, body: dict) -> None:
    # With an API key, as clients send: anonymous requests skip the caches by default.
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json",
                                                                  "authorization": "Bearer observe-test"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


@pytest.fixture(scope="module")
def observed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if shutil.which("prometheus") is None:
        missing("prometheus not installed (Debian package `prometheus`)")
    logs = tmp_path_factory.mktemp("up-observe")
    for _ in range(3):  # another process may take a port of the block between the check and the bind
        base = free_port_block(1, low=20000, high=29000)
        proc = subprocess.Popen(
            [sys.executable, "-m", "thrifty.cli", "up", "--engine", "sim", "--observe", "--port-base", str(base),
             "--log-dir", str(logs)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{base}/healthz", 120, proc)
            wait_http(f"http://127.0.0.1:{base + 92}/-/ready", 30, proc)
            break
        except RuntimeError as exc:
            if "in use" not in str(exc):
                raise
    else:
        pytest.fail("no free port block for thrifty up after 3 tries")
    try:
        yield {"sidecar": f"http://127.0.0.1:{base}", "prometheus": f"http://127.0.0.1:{base + 92}", "logs": str(logs)}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
        assert f"prometheus: http://127.0.0.1:{base + 92}" in out, out


def test_rules_are_loaded_and_every_part_is_scraped(observed_stack: dict[str, str]) -> None:
    prom = observed_stack["prometheus"]
    groups = _get(prom + "/api/v1/rules")["data"]["groups"]
    assert groups and all(g["rules"] for g in groups)
    deadline = time.monotonic() + 30
    while True:
        up = {(t["labels"]["job"], t["health"]) for t in _get(prom + "/api/v1/targets")["data"]["activeTargets"]}
        if {("thrifty-sidecar", "up"), ("thrifty-controller", "up"), ("vllm", "up")} <= up:
            break
        assert time.monotonic() < deadline, f"targets not all up: {up}"
        time.sleep(1)


def test_every_documented_series_is_present_after_a_few_requests(observed_stack: dict[str, str]) -> None:
    documented = [m for m in documented_metrics() if not m.startswith(FEATURE_ONLY_PREFIXES)]
    assert len(documented) > 20, "docs/metrics.md tables not found"
    for i in range(12):
        body = {"model": "gpt-4o" if i % 2 else "gpt-4o-mini", "max_tokens": 8,
                "messages": [{"role": "user", "content": f"question {i % 4}: how do I cut serving cost?"}]}
        if i % 3 == 0:
            body["stream"] = True
        _post(observed_stack["sidecar"] + "/v1/chat/completions", body)
    prom = observed_stack["prometheus"]
    pending = set(documented)
    deadline = time.monotonic() + 60  # scrapes every 5 s, the controller's rounds, a loaded machine
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        names = set(_get(prom + "/api/v1/label/__name__/values")["data"])
        described = set(_get(prom + "/api/v1/metadata")["data"])
        pending = {m for m in pending if not ({m, m + "_bucket", m + "_count"} & names)
                   and not (m in EVENT_ONLY and m in described)}
    assert not pending, f"documented metrics missing in Prometheus: {sorted(pending)} (logs in {observed_stack['logs']})"
