"""Every Grafana panel's PromQL against a real Prometheus (Debian's `prometheus`) that
scrapes a real stack: two simulated vLLM replicas (`thrifty engine sim`, same `vllm:`
metric names, fast time scale), the thrifty sidecar in front of them streaming
telemetry to the controller, and the controller. After some traffic (plain, streamed,
repeated for the exact cache), each panel query, with the dashboard variables set to
"All", must return at least one series; the recording rules must produce data too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.realparts import free_port, missing, wait_http
from tests.unit.test_grafana_assets import GRAFANA, panel_queries

pytestmark = pytest.mark.infra
NAMESPACE = "thrifty-test"
TOKEN = "grafana-test-token"
TELEMETRY_TOKEN = "grafana-test-telemetry-token"


def _config(small: str, large: str, grpc: str, http: str) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 8000},
        "tiers": [
            {"name": "small", "model": "small-sim", "aliases": ["gpt-4o-mini"], "engine": {"kind": "external"},
             "price": {"gpu_hour": 0.5}, "replicas": {"count": 1, "min": 1, "max": 2, "urls": [small]}},
            {"name": "large", "model": "large-sim", "aliases": ["gpt-4o"],
             "engine": {"kind": "external", "speculative": {"method": "ngram", "num_speculative_tokens": 4}},
             "price": {"gpu_hour": 2.5}, "replicas": {"count": 1, "min": 1, "max": 2, "urls": [large]}},
        ],
        "baseline_tier": "large",
        "cache": {"semantic": {"enabled": False}},
        "router": {"enabled": False},
        "controller": {"url": grpc, "listen_grpc": grpc, "listen_http": http, "interval_s": 1},
    }


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        env = {**os.environ, "THRIFTY_TELEMETRY_TOKEN": TELEMETRY_TOKEN}  # the controller and sidecar share it
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _post(url: str, body: dict, timeout: float = 30) -> bytes:
    # With an API key, as clients send: anonymous requests skip the caches by default.
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer grafana-test"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"POST {url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing("prometheus not installed (Debian package `prometheus`)")
    work = tmp_path_factory.mktemp("grafana-stack")
    st = Stack(work)
    thrifty = [sys.executable, "-m", "thrifty.cli"]
    ports = {k: free_port() for k in ("small", "large", "sidecar", "grpc", "http", "prom")}
    try:
        small, large = f"http://127.0.0.1:{ports['small']}", f"http://127.0.0.1:{ports['large']}"
        engines = [
            st.spawn("sim-small", thrifty + ["engine", "sim", "--port", str(ports["small"]), "--profile", "a100-llama3-8b",
                                            "--model", "small-sim", "--served-model-name", "small-sim", "gpt-4o-mini",
                                            "--time-scale", "20"]),
            st.spawn("sim-large", thrifty + ["engine", "sim", "--port", str(ports["large"]), "--profile", "a100-llama3-8b",
                                            "--model", "large-sim", "--served-model-name", "large-sim", "gpt-4o",
                                            "--speculative-tokens", "4", "--time-scale", "20"]),
        ]
        grpc, http = f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}"
        cfg = work / "thrifty.yaml"
        cfg.write_text(yaml.safe_dump(_config(small, large, grpc, http)))
        ctl = st.spawn("controller", thrifty + ["controller", "--config", str(cfg), "--no-kube", "--token", TOKEN])
        sidecar = st.spawn("sidecar", thrifty + ["proxy", "--config", str(cfg), "--port", str(ports["sidecar"]), "--no-access-log"])
        for url, proc in ((f"{small}/health", engines[0]), (f"{large}/health", engines[1]),
                          (f"http://{http}/healthz", ctl), (f"http://127.0.0.1:{ports['sidecar']}/healthz", sidecar)):
            wait_http(url, 90, proc)
        prom_cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(GRAFANA / "rules" / "thrifty-rules.yaml")],
            "scrape_configs": [
                {"job_name": "thrifty-sidecar", "static_configs": [
                    {"targets": [f"127.0.0.1:{ports['sidecar']}"], "labels": {"namespace": NAMESPACE}}]},
                {"job_name": "vllm", "static_configs": [
                    {"targets": [f"127.0.0.1:{ports['small']}"], "labels": {"namespace": NAMESPACE, "tier": "small"}},
                    {"targets": [f"127.0.0.1:{ports['large']}"], "labels": {"namespace": NAMESPACE, "tier": "large"}}]},
                {"job_name": "thrifty-controller", "static_configs": [
                    {"targets": [http], "labels": {"namespace": NAMESPACE}}]},
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        prom = st.spawn("prometheus", [prometheus, f"--config.file={work / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{ports['prom']}",
                                       "--storage.tsdb.retention.time=1h"])
        wait_http(f"http://127.0.0.1:{ports['prom']}/-/ready", 60, prom)
        yield {"sidecar": f"http://127.0.0.1:{ports['sidecar']}", "prometheus": f"http://127.0.0.1:{ports['prom']}",
               "workdir": str(work)}
    finally:
        st.stop()


def _traffic(sidecar: str) -> None:
    """~40 bounded requests: both tiers, repeats (exact-cache hits), streamed answers."""
    deadline = time.monotonic() + 60
    for i in range(40):
        assert time.monotonic() < deadline, "traffic took too long"
        model = "gpt-4o" if i % 3 else "gpt-4o-mini"
        body = {"model": model, "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": f"question {i % 8}: say something about thrift"}]}
        if i % 4 == 0:
            body["stream"] = True
        _post(f"{sidecar}/v1/chat/completions", body)


# Panels of features this stack does not configure (the Redis shared cache tier, KV-event
# indexes of real vLLM replicas) have no series here; their queries are checked by promtool
# and the dashboard unit tests, and the shared tier's metrics by tests/infra/test_shared_cache_redis.py.
# Series that exist only after events this stack may not produce are exempt too (the lane
# gauges, the lane shed counter family, every thrifty_ledger_*_total counter (both groups are
# labelled when the quality loop starts, judged counts included) and the router threshold
# gauge are exported from the start and stay checked):
FEATURE_ONLY_METRICS = (
    "thrifty_shared_cache_", "thrifty_kv_index_",
    # shadow calls, spend, verdicts, scores, skips: only once a 2% shadow draw picks one of ~80
    # requests, and with the router off only requests for the cheaper tier are candidates
    "thrifty_shadow_",
    # the controller's quality gauges (quality retained, drop, ledger savings/cost/quality) are
    # set on its control rounds only once shadow verdicts have arrived
    "thrifty_controller_quality_", "thrifty_controller_ledger_",
    # the semantic cache's watch: this stack runs without the semantic cache
    "thrifty_cache_false_hit_rate", "thrifty_cache_similarity_floor",
    # the Batch API: the backlog gauge only with batch.store, lines only when a batch runs
    "thrifty_batch_",
)


def test_every_panel_query_returns_data(stack: dict[str, str]) -> None:
    prom = stack["prometheus"]
    _traffic(stack["sidecar"])
    time.sleep(4)
    _traffic(stack["sidecar"])  # a second round: rates need two scrapes with traffic between
    # Telemetry windows, controller rounds, scrapes and rule evaluations each add a second or
    # more, and a loaded CI machine stretches them: poll the panels still empty, up to 40 s.
    pending = {f"{name} / {title}: {q}": q for name, title, expr in panel_queries()
               for q in [expr.replace("$namespace", NAMESPACE).replace("$tier", ".*").replace("$__rate_interval", "1m")]
               if not any(m in expr for m in FEATURE_ONLY_METRICS)}
    deadline = time.monotonic() + 40
    while pending and time.monotonic() < deadline:
        time.sleep(2)
        pending = {label: q for label, q in pending.items() if not _query(prom, q)}
    assert not pending, "panels with no data:\n" + "\n".join(pending) + f"\n(logs in {stack['workdir']})"


def test_variables_and_recording_rules_have_data(stack: dict[str, str]) -> None:
    prom = stack["prometheus"]
    ns = _query(prom, "count by (namespace) (thrifty_requests_total)")
    assert {s["metric"]["namespace"] for s in ns} == {NAMESPACE}
    tiers = _query(prom, f'count by (tier) (thrifty_requests_total{{namespace="{NAMESPACE}"}})')
    assert {s["metric"]["tier"] for s in tiers} == {"small", "large"}
    for record in ("namespace:thrifty_savings_ratio:rate5m", "tier:thrifty_requests:rate5m", "kind:thrifty_cache_hit:ratio_rate5m"):
        deadline = time.monotonic() + 40
        while not _query(prom, record):
            assert time.monotonic() < deadline, f"recording rule {record} has no data"
            time.sleep(1)
