"""Kustomize renders both overlays; every object passes strict Kubernetes schema
validation (kubernetes-validate, offline) and the Prometheus Operator objects are
checked structurally (no schemas ship for CRDs). The manifests are also checked
against the code they deploy: the vLLM args are what the launcher builds from the
overlay's config, and the Role is exactly what the controller says it needs."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from thrifty.config import parse_config
from thrifty.controller.k8s import role_rules
from thrifty.engine.launcher import vllm_args

ROOT = Path(__file__).parents[2]
OVERLAYS = ["gpu", "cpu-demo"]
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
SCHEMA_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]


def find_kubectl() -> str | None:
    """$THRIFTY_KUBECTL, else the kubectl scripts/setup-k8s.sh built, else one on PATH."""
    if os.environ.get("THRIFTY_KUBECTL"):
        return os.environ["THRIFTY_KUBECTL"]
    cache_root = os.environ.get("THRIFTY_CACHE", os.path.expanduser("~/.cache/thrifty"))
    built = sorted(glob.glob(os.path.join(cache_root, "k8s-*", "bin", "kubectl")))
    return built[-1] if built else shutil.which("kubectl")


KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl with kustomize (scripts/setup-k8s.sh builds one)")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def of_kind(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in of_kind(objs, kind) if o["metadata"]["name"] == name)


def overlay_config(objs: tuple[dict[str, Any], ...]):
    (cm,) = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("thrifty-config")]
    return parse_config(yaml.safe_load(cm["data"]["thrifty.yaml"]), "thrifty.yaml")


def container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_the_expected_objects(overlay: str) -> None:
    kinds = sorted(o["kind"] for o in render(overlay))
    for kind in ["Namespace", "ServiceAccount", "Role", "RoleBinding", "Lease", "ConfigMap", "Deployment", "Service",
                 "PodMonitor", "ServiceMonitor", "PrometheusRule"]:
        assert kind in kinds, (overlay, kind)
    assert all(o["metadata"].get("namespace") == "thrifty" for o in render(overlay) if o["kind"] != "Namespace")


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_passes_strict_schema_validation(overlay: str, version: str) -> None:
    checked = 0
    for obj in render(overlay):
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} ({version}): {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_on_the_client_port_vllm_behind_it(overlay: str) -> None:
    objs = render(overlay)
    config = overlay_config(objs)
    svc = by_name(objs, "Service", "thrifty")
    assert svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["ports"][0]["targetPort"] == "sidecar"
    for tier in config.tiers:
        dep = by_name(objs, "Deployment", tier.replicas.deployment or tier.name)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), tier.name
        sidecar, vllm = container(dep, "sidecar"), container(dep, "vllm")
        assert {"name": "sidecar", "containerPort": 8000} in sidecar["ports"]
        assert {"name": "engine", "containerPort": 8001} in vllm["ports"]
        assert f"--replica={tier.name}=http://127.0.0.1:8001" in sidecar["args"]
        # quantization + speculative flags straight from the tier config:
        assert vllm["args"] == vllm_args(tier, port=8001, host="0.0.0.0"), (overlay, tier.name)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        cm_name = volumes["config"]["configMap"]["name"]
        assert cm_name.startswith("thrifty-config-"), "the generated (hashed) ConfigMap is referenced"
        engine_svc = by_name(objs, "Service", f"thrifty-{tier.name}-engine")
        assert f"http://thrifty-{tier.name}-engine:8001" in tier.replicas.urls
        assert engine_svc["spec"]["ports"][0]["port"] == 8001


def test_gpu_overlay_asks_for_gpus_and_cpu_demo_does_not() -> None:
    for overlay, wants_gpu in (("gpu", True), ("cpu-demo", False)):
        for dep in of_kind(render(overlay), "Deployment"):
            if dep["metadata"]["name"] == "thrifty-controller":
                continue
            limits = container(dep, "vllm")["resources"].get("limits", {})
            assert ("nvidia.com/gpu" in limits) == wants_gpu, (overlay, dep["metadata"]["name"])
    assert any(t.engine.quantization for t in overlay_config(render("gpu")).tiers)
    assert all(t.engine.device == "cpu" for t in overlay_config(render("cpu-demo")).tiers)


def test_role_is_least_privilege_and_bound_to_the_controller() -> None:
    objs = render("gpu")
    role = by_name(objs, "Role", "thrifty-controller")
    assert role["rules"] == role_rules()
    binding = by_name(objs, "RoleBinding", "thrifty-controller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "thrifty-controller", "namespace": "thrifty"}]
    dep = by_name(objs, "Deployment", "thrifty-controller")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "thrifty-controller"
    assert by_name(objs, "Lease", "thrifty-controller")
    assert not of_kind(objs, "ClusterRole")


def test_prometheus_operator_objects_point_at_real_ports() -> None:
    objs = render("gpu")
    pm = by_name(objs, "PodMonitor", "thrifty-serving")
    serving = [d for d in of_kind(objs, "Deployment") if d["metadata"]["name"] != "thrifty-controller"]
    for dep in serving:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
        ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports
    sm = by_name(objs, "ServiceMonitor", "thrifty-controller")
    svc = by_name(objs, "Service", "thrifty-controller")
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    rule = by_name(objs, "PrometheusRule", "thrifty")
    plain = yaml.safe_load((ROOT / "grafana" / "rules" / "thrifty-rules.yaml").read_text())
    assert rule["spec"]["groups"] == plain["groups"]
    for obj in (pm, sm, rule):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_and_the_telemetry_secret(overlay: str) -> None:
    """Issue 17: telemetry only from sidecars, the API from operators/Prometheus, engines only
    from serving pods; the telemetry token from one Secret in the controller and every sidecar."""
    objs = render(overlay)
    deny = by_name(objs, "NetworkPolicy", "thrifty-default-deny")["spec"]
    assert deny["podSelector"] in ({}, {"matchLabels": {"app.kubernetes.io/part-of": "thrifty"}})
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny

    def rules(name: str) -> dict[int, list[dict[str, Any]] | None]:
        spec = by_name(objs, "NetworkPolicy", name)["spec"]
        return {p["port"]: r.get("from") for r in spec["ingress"] for p in r["ports"]}

    controller = rules("thrifty-controller")
    assert set(controller) == {50051, 8090}
    assert [f["podSelector"]["matchLabels"]["thrifty.dev/role"] for f in controller[50051]] == ["serving"]
    assert controller[8090] and all("podSelector" in f or "namespaceSelector" in f for f in controller[8090])
    serving = rules("thrifty-serving")
    assert serving[8000] is None  # the OpenAI API: open to clients
    assert serving[8001] and serving[8001][0]["podSelector"]["matchLabels"]["thrifty.dev/role"] == "serving"

    def secret_env(container: dict[str, Any]) -> str | None:
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env.get("THRIFTY_TELEMETRY_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        return ref and ref["name"]

    for dep in of_kind(objs, "Deployment"):
        containers = dep["spec"]["template"]["spec"]["containers"]
        thrifty_containers = [c for c in containers if c["name"] in ("sidecar", "controller")]
        assert thrifty_containers, dep["metadata"]["name"]
        for c in thrifty_containers:
            assert secret_env(c) == "thrifty-telemetry-token", (overlay, dep["metadata"]["name"])
            assert not any(a.startswith("--token") for a in c.get("args", []))  # never on a command line
            if c["name"] == "sidecar":
                assert "--sidecar-id=$(POD_NAME)" in c["args"]
