"""Server-side dry-run of both rendered overlays against a real kube-apiserver (1.20,
from scripts/setup-k8s.sh). The namespace is created for real first (namespaced objects
cannot be dry-run into a namespace that does not exist).

The Prometheus Operator kinds (PodMonitor, ServiceMonitor, PrometheusRule) are left out
of the dry-run: this kube-apiserver (Debian's 1.20 sources built with Go 1.19) crashes
with SIGSEGV in json-iterator/reflect2 when it decodes any custom resource, which
would take the shared API server down for every other infra test. They are checked
structurally in tests/unit/test_manifests_render.py instead."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.infra.k8s import KubeApi, kube_api  # noqa: F401 - fixture
from tests.unit.test_manifests_render import CRD_KINDS, OVERLAYS, render

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def cluster(kube_api: KubeApi) -> KubeApi:  # noqa: F811 - the imported fixture
    core = client.CoreV1Api(kube_api.api_client())
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="thrifty")))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return kube_api


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_side_dry_run_accepts_every_builtin_object(cluster: KubeApi, overlay: str, tmp_path: Path) -> None:
    objs = [o for o in render(overlay) if o["kind"] not in CRD_KINDS]
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    kubectl = os.path.join(cluster.bin_dir, "kubectl")
    auth = ["--server", cluster.host, "--token", cluster.token, "--insecure-skip-tls-verify"]
    done = subprocess.run([kubectl, *auth, "apply", "--dry-run=server", "-o", "name", "-f", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    accepted = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    assert len(accepted) == len(objs), accepted
    kinds = {o["kind"].lower() for o in objs}
    assert kinds == {a.split("/", 1)[0].split(".", 1)[0] for a in accepted}
    apps = client.AppsV1Api(cluster.api_client())
    names = [d.metadata.name for d in apps.list_namespaced_deployment("thrifty").items]
    assert not [n for n in names if n.startswith("thrifty-")], "a dry-run must create nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_rejects_a_broken_object(cluster: KubeApi, overlay: str, tmp_path: Path) -> None:
    """The dry-run really validates: the same Deployment with a bad port is refused."""
    dep = next(o for o in render(overlay) if o["kind"] == "Deployment" and o["metadata"]["name"] == "thrifty-large")
    broken = yaml.safe_load(yaml.safe_dump(dep))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    kubectl = os.path.join(cluster.bin_dir, "kubectl")
    auth = ["--server", cluster.host, "--token", cluster.token, "--insecure-skip-tls-verify"]
    done = subprocess.run([kubectl, *auth, "apply", "--dry-run=server", "-f", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "containerPort" in done.stderr
