"""Kubernetes actuation against a real kube-apiserver (tests/infra/k8s.py)."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.infra.k8s import KubeApi, kube_api, mark_pods_ready  # noqa: F401 - fixture
from thrifty.controller.k8s import KubeActuator, LeaseElector, RetryPolicy, role_rules

pytestmark = pytest.mark.infra
FAST = RetryPolicy(attempts=5, base_s=0.01, max_s=0.05)


def _namespace(kube: KubeApi) -> str:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube.api_client()).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    return ns


def _deployment(kube: KubeApi, ns: str, name: str, replicas: int = 1) -> None:
    labels = {"app": name}
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="engine", image="vllm/vllm-openai:v0.32.0")]),
            ),
        ),
    )
    client.AppsV1Api(kube.api_client()).create_namespaced_deployment(ns, body)


def _eventually(fn, timeout_s: float = 30.0, every_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every_s)


def test_scale_patches_deployment_records_event_and_pods_become_ready(kube_api: KubeApi) -> None:
    ns = _namespace(kube_api)
    _deployment(kube_api, ns, "large")
    api = kube_api.api_client()
    act = KubeActuator(api, ns, {"large": "large"}, retry=FAST)
    res = act.scale("large", 3, "load 2.7 replicas")
    assert (res.from_replicas, res.to_replicas, res.applied) == (1, 3, True)
    assert act.replicas("large")[0] == 3

    def ready() -> bool:  # the controller-manager makes pods, the stand-in kubelet readies them
        mark_pods_ready(api, ns)
        return act.replicas("large")[1] == 3

    _eventually(ready)
    events = client.CoreV1Api(api).list_namespaced_event(ns).items
    scaled = [e for e in events if e.reason == "ScaledUp" and e.involved_object.name == "large"]
    assert scaled and "from 1 to 3" in scaled[0].message and scaled[0].source.component == "thrifty-controller"


def test_dry_run_changes_nothing(kube_api: KubeApi) -> None:
    ns = _namespace(kube_api)
    _deployment(kube_api, ns, "small", replicas=2)
    act = KubeActuator(kube_api.api_client(), ns, {"small": "small"}, dry_run=True, retry=FAST)
    res = act.scale("small", 5, "test")
    assert res.dry_run and not res.applied and res.to_replicas == 5
    assert act.replicas("small")[0] == 2
    reasons = [e.reason for e in client.CoreV1Api(kube_api.api_client()).list_namespaced_event(ns).items]
    assert "ScaleDryRun" in reasons and "ScaledUp" not in reasons


def test_conflict_is_retried_on_fresh_data(kube_api: KubeApi) -> None:
    """A concurrent writer bumps the Deployment between our read and write: the server answers 409."""
    ns = _namespace(kube_api)
    _deployment(kube_api, ns, "large")
    api = kube_api.api_client()
    act = KubeActuator(api, ns, {"large": "large"}, retry=FAST)
    other = client.AppsV1Api(kube_api.api_client())
    real_read = act.apps.read_namespaced_deployment_scale
    calls = {"read": 0, "conflicts": 0}

    def read_then_race(name: str, namespace: str):
        scale = real_read(name, namespace)
        calls["read"] += 1
        if calls["read"] == 1:  # someone else scales it right after our read
            other.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 2}})
        return scale

    real_replace = act.apps.replace_namespaced_deployment_scale

    def replace(*a, **kw):
        try:
            return real_replace(*a, **kw)
        except ApiException as exc:
            calls["conflicts"] += exc.status == 409
            raise

    act.apps.read_namespaced_deployment_scale = read_then_race  # type: ignore[method-assign]
    act.apps.replace_namespaced_deployment_scale = replace  # type: ignore[method-assign]
    res = act.scale("large", 4, "test")
    # The kube-controller-manager may also bump the Deployment (status) while it settles,
    # so more than one conflict can happen; each must be followed by a fresh read.
    assert calls["conflicts"] >= 1 and calls["read"] == calls["conflicts"] + 1
    assert res.from_replicas == 2 and res.applied  # re-read after the conflict
    assert act.replicas("large")[0] == 4


def test_only_one_of_two_controllers_leads(kube_api: KubeApi) -> None:
    ns = _namespace(kube_api)
    coord = lambda: client.CoordinationV1Api(kube_api.api_client())  # noqa: E731
    a = LeaseElector(coord(), ns, identity="a", lease_duration_s=2)
    b = LeaseElector(coord(), ns, identity="b", lease_duration_s=2)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert a.try_acquire_or_renew() is True  # renew
    _deployment(kube_api, ns, "large")
    act_b = KubeActuator(kube_api.api_client(), ns, {"large": "large"}, elector=b, retry=FAST)
    assert act_b.lead() is False
    time.sleep(2.5)  # a stops renewing: the lease expires and b takes over
    assert b.try_acquire_or_renew() is True
    assert a.try_acquire_or_renew() is False
    lease = coord().read_namespaced_lease("thrifty-controller", ns)
    assert lease.spec.holder_identity == "b" and lease.spec.lease_transitions == 1
    b.release()
    assert a.try_acquire_or_renew() is True  # released: no need to wait for expiry


def test_role_allows_what_the_controller_needs_and_nothing_more(kube_api: KubeApi, tmp_path) -> None:
    ns = _namespace(kube_api)
    _deployment(kube_api, ns, "large")
    admin = kube_api.api_client()
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="ctl")))
    rbac.create_namespaced_role(ns, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                                     "metadata": {"name": "thrifty-controller"}, "rules": role_rules()})
    rbac.create_namespaced_role_binding(ns, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "thrifty-controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "thrifty-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": "ctl", "namespace": ns}],
    })
    token = core.create_namespaced_service_account_token(
        "ctl", ns, {"spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}}).status.token
    sa = kube_api.api_client(token)
    elector = LeaseElector(client.CoordinationV1Api(sa), ns, identity="sa")
    act = KubeActuator(sa, ns, {"large": "large"}, elector=elector, retry=FAST)
    assert act.lead() is True and act.lead() is True  # create, then get + update
    assert act.scale("large", 2, "rbac test").applied
    act.event(None, "DriftDetected", "fleet-wide alert")
    with pytest.raises(ApiException) as denied:
        client.AppsV1Api(sa).delete_namespaced_deployment("large", ns)
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(sa).list_namespaced_secret(ns)
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:
        client.AppsV1Api(sa).patch_namespaced_deployment("large", ns, {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}})
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied:  # another namespace is out of reach
        client.AppsV1Api(sa).list_namespaced_deployment("default")
    assert denied.value.status == 403
