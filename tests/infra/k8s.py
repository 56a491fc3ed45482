"""A real Kubernetes control plane for the infra tests: etcd + kube-apiserver + controller-manager.

Binaries come from `scripts/setup-k8s.sh` (Debian's kubernetes 1.20.2 built with Debian's
Go; etcd from Debian's `etcd-server`). Everything binds to loopback on free ports with
token-file authentication, RBAC authorisation and service-account keys made with
openssl. There is no kubelet: `mark_pods_ready` sets the Ready condition on pods the way
a kubelet would report it, so Deployments get ready replicas.

Import the fixture in a conftest (`from tests.infra.k8s import kube_api`); it yields
`KubeApi(host, token, kubeconfig, ...)` and skips with the reason when a binary is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from tests.realparts import free_port, missing


@dataclass
class KubeApi:
    host: str  # https://127.0.0.1:PORT
    token: str  # system:masters
    kubeconfig: str
    bin_dir: str
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def api_client(self, token: str | None = None):
        """A kubernetes ApiClient for `token` (default: the admin token)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.host
        cfg.verify_ssl = False
        cfg.api_key = {"authorization": "Bearer " + (token or self.token)}
        return client.ApiClient(cfg)

    def kubeconfig_for(self, token: str, path: Path) -> str:
        write_kubeconfig(path, self.host, token)
        return str(path)


def find_k8s_bin() -> str | None:
    """`THRIFTY_K8S_BIN`, else the newest cached build of scripts/setup-k8s.sh, else PATH."""
    wanted = ("kube-apiserver", "kube-controller-manager")
    env = os.environ.get("THRIFTY_K8S_BIN")
    candidates = [env] if env else []
    cache = os.environ.get("THRIFTY_CACHE", os.path.expanduser("~/.cache/thrifty"))
    candidates += sorted(glob.glob(os.path.join(cache, "k8s-*", "bin")), key=os.path.getmtime, reverse=True)
    for c in candidates:
        if c and all(os.access(os.path.join(c, w), os.X_OK) for w in wanted):
            return c
    found = shutil.which("kube-apiserver")
    if found and shutil.which("kube-controller-manager"):
        return os.path.dirname(found)
    return None


def write_kubeconfig(path: Path, host: str, token: str) -> None:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "thrifty",
        "clusters": [{"name": "local", "cluster": {"server": host, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "thrifty", "context": {"cluster": "local", "user": "user"}}],
    }))


def _wait_ready(url: str, token: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s; log: {log.read_text()[-2000:]}")


def start_control_plane(workdir: Path, bin_dir: str, etcd: str) -> KubeApi:
    workdir.mkdir(parents=True, exist_ok=True)
    admin_token, kcm_token = uuid.uuid4().hex, uuid.uuid4().hex
    (workdir / "tokens.csv").write_text(
        f'{admin_token},admin,admin-uid,"system:masters"\n'
        f'{kcm_token},system:kube-controller-manager,kcm-uid,"system:masters"\n'
    )
    key, pub = workdir / "sa.key", workdir / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    procs: list[subprocess.Popen] = []

    def spawn(name: str, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = workdir / f"{name}.log"
        proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        spawn("etcd", [
            etcd, "--name", "thrifty", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"thrifty=http://127.0.0.1:{peer_port}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        ])
        api, api_log = spawn("kube-apiserver", [
            os.path.join(bin_dir, "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(api_port), "--insecure-port", "0",
            "--cert-dir", str(workdir / "certs"),
            "--token-auth-file", str(workdir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-key-file", str(pub),
            "--service-account-signing-key-file", str(key),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--api-audiences", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/24",
            "--disable-admission-plugins", "ServiceAccount",
            "--enable-priority-and-fairness=false",
        ])
        host = f"https://127.0.0.1:{api_port}"
        _wait_ready(host + "/readyz", admin_token, api, api_log)
        write_kubeconfig(workdir / "kcm.kubeconfig", host, kcm_token)
        spawn("kube-controller-manager", [
            os.path.join(bin_dir, "kube-controller-manager"),
            "--kubeconfig", str(workdir / "kcm.kubeconfig"),
            "--controllers", "deployment,replicaset",
            "--leader-elect=false", "--port", "0", "--secure-port", "0",
        ])
        write_kubeconfig(workdir / "admin.kubeconfig", host, admin_token)
        return KubeApi(host, admin_token, str(workdir / "admin.kubeconfig"), bin_dir, workdir, procs)
    except BaseException:
        stop_processes(procs)
        raise


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def mark_pods_ready(api_client, namespace: str, selector: str | None = None) -> int:
    """Stand-in for a kubelet: report every pending pod Running and Ready. Returns how many."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    n = 0
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        conds = {c.type: c.status for c in (pod.status.conditions or [])} if pod.status else {}
        if conds.get("Ready") == "True" or pod.metadata.deletion_timestamp is not None:
            continue
        body = {"status": {"phase": "Running", "startTime": now, "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}}
        core.patch_namespaced_pod_status(pod.metadata.name, namespace, body)
        n += 1
    return n


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """A real kube-apiserver (+ etcd, controller-manager) for the session."""
    bin_dir = find_k8s_bin()
    if bin_dir is None:
        missing("kube-apiserver/kube-controller-manager not built: run scripts/setup-k8s.sh "
                "(or set THRIFTY_K8S_BIN)")
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if etcd is None:
        missing("etcd not installed (Debian package etcd-server; scripts/setup-k8s.sh installs it)")
    if shutil.which("openssl") is None:
        missing("openssl not installed")
    kube = start_control_plane(tmp_path_factory.mktemp("kube"), bin_dir, etcd)  # type: ignore[arg-type]
    try:
        yield kube
    finally:
        stop_processes(kube.procs)
