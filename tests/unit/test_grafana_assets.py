"""Grafana dashboards and Prometheus rules, checked offline: the committed JSON is what
the generator writes, every query filters by the template variables and names only
documented metrics, every query parses (promtool), and the rules pass `promtool test`."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
GRAFANA = ROOT / "grafana"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    return [(name, p["title"], t["expr"]) for name, d in dashboards().items() for p in d["panels"] for t in p["targets"]]


def substitute(expr: str) -> str:
    """What Grafana sends for 'All' in both variables and a 15 s scrape interval."""
    return expr.replace("$namespace", ".*").replace("$tier", ".*").replace("$__rate_interval", "1m")


def test_committed_json_is_what_the_generator_writes() -> None:
    rendered = _generator().render_all()
    assert set(rendered) == set(dashboards())
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, f"{name} is stale: run python grafana/build_dashboards.py"


def test_four_dashboards_with_namespace_and_tier_variables() -> None:
    boards = dashboards()
    titles = {d["title"] for d in boards.values()}
    assert titles == {"Thrifty / Cost & savings", "Thrifty / SLOs & fleet", "Thrifty / Caches & routing", "Thrifty / Drift & scaling"}
    for name, d in boards.items():
        variables = {v["name"] for v in d["templating"]["list"]}
        assert {"namespace", "tier", "datasource"} <= variables, name
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, p["title"])
            assert p["targets"], (name, p["title"])


def test_every_query_filters_by_namespace() -> None:
    for name, title, expr in panel_queries():
        selectors = re.findall(r"\b[a-z0-9_:]+\{[^}]*\}", expr)
        assert selectors, (name, title)
        for sel in selectors:
            assert 'namespace=~"$namespace"' in sel, (name, title, sel)


def _documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`(thrifty_[a-z0-9_]+)`", text))


def test_queries_name_only_documented_metrics() -> None:
    documented = _documented_metrics()
    sim = (ROOT / "engine" / "sim_metrics.py")
    vllm_names = set(re.findall(r'"(vllm:[a-z_]+)"', sim.read_text())) if sim.exists() else set()
    for name, title, expr in panel_queries():
        for metric in re.findall(r"\b((?:thrifty_|vllm:)[a-z0-9_:]+)\{", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if metric.startswith("thrifty_"):
                assert base in documented or base.removesuffix("_total") + "_total" in documented, (name, title, metric)
            elif vllm_names:
                assert base.removesuffix("_total") in vllm_names or base in vllm_names, (name, title, metric)


def test_provisioning_points_at_the_dashboards() -> None:
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text())
    assert dash["apiVersion"] == 1 and dash["providers"][0]["type"] == "file"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yaml").read_text())
    prom = ds["datasources"][0]
    assert prom["type"] == "prometheus" and prom["uid"] == "prometheus"


@needs_promtool
def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses PromQL offline when the queries are wrapped as recording rules."""
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:q{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(panel_queries())
    ]}]}
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_check_and_unit_tests_pass() -> None:
    rules = GRAFANA / "rules"
    check = subprocess.run([PROMTOOL, "check", "rules", "thrifty-rules.yaml"], cwd=rules, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "thrifty-rules.test.yaml"], cwd=rules, capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr


def test_operator_rule_matches_the_plain_rule_file() -> None:
    """manifests/base/prometheusrule.yaml must carry the same groups as grafana/rules."""
    plain = yaml.safe_load((GRAFANA / "rules" / "thrifty-rules.yaml").read_text())
    operator = yaml.safe_load((ROOT / "manifests" / "base" / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == plain["groups"]
