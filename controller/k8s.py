"""Kubernetes actuation: scale each tier's Deployment, record Events, elect one leader.

Uses the official `kubernetes` client (blocking; the control loop calls it through
`asyncio.to_thread`). Scaling is a read-modify-write of the Deployment's `scale`
subresource carrying the read `resourceVersion`, so a concurrent writer makes it fail
with 409 and it is retried on fresh data rather than overwritten blindly. Leader
election follows client-go's Lease protocol (holderIdentity / renewTime /
leaseDurationSeconds) so two controllers never both act. Dry-run sends the same
requests with `dryRun=All`: the API server authorises and validates them, persists
nothing, and an Event says what would have happened.

RBAC: the Role below is all the controller needs in its namespace (also returned by
`role_rules()` for the manifests):

    - apiGroups: ["apps"]
      resources: ["deployments"]
      verbs: ["get", "list", "watch"]
    - apiGroups: ["apps"]
      resources: ["deployments/scale"]
      verbs: ["get", "update", "patch"]
    - apiGroups: [""]
      resources: ["events"]
      verbs: ["create", "patch"]
    - apiGroups: ["coordination.k8s.io"]
      resources: ["leases"]
      verbs: ["create"]
    - apiGroups: ["coordination.k8s.io"]
      resources: ["leases"]
      resourceNames: ["thrifty-controller"]
      verbs: ["get", "update"]
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
T = TypeVar("T")
COMPONENT = "thrifty-controller"
DEFAULT_LEASE = "thrifty-controller"
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


def role_rules(lease_name: str = DEFAULT_LEASE) -> list[dict[str, Any]]:
    """The namespaced Role rules the controller needs, nothing more."""
    return [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        # `create` cannot be limited by name (the object does not exist yet).
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease_name],
         "verbs": ["get", "update"]},
    ]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.1
    max_s: float = 2.0

    def delay(self, attempt: int) -> float:
        """Exponential back-off with full jitter."""
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def with_retries(fn: Callable[[], T], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `fn`, retrying on 409/429/5xx (fn re-reads state each time, so 409 is safe)."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except ApiException as exc:
            if exc.status not in RETRY_STATUSES or attempt == policy.attempts - 1:
                raise
            log.info("kubernetes API answered %s; retry %d", exc.status, attempt + 1)
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class ScaleResult:
    tier: str
    deployment: str
    from_replicas: int
    to_replicas: int
    applied: bool  # persisted (False in dry-run or when already there)
    dry_run: bool


class LeaseElector:
    """One candidate in a Lease-based election (client-go's protocol)."""

    def __init__(self, coordination: client.CoordinationV1Api, namespace: str, *, name: str = DEFAULT_LEASE,
                 identity: str | None = None, lease_duration_s: int = 15,
                 clock: Callable[[], datetime] = _now) -> None:
        self.api, self.namespace, self.name = coordination, namespace, name
        self.identity = identity or f"{COMPONENT}-{uuid.uuid4().hex[:8]}"
        self.lease_duration_s = lease_duration_s
        self.clock = clock
        self.is_leader = False

    def try_acquire_or_renew(self) -> bool:
        """One election round; returns whether this candidate holds the Lease now."""
        self.is_leader = self._round()
        return self.is_leader

    def _round(self) -> bool:
        now = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.lease_duration_s,
                                        acquire_time=now, renew_time=now, lease_transitions=0),
            )
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or self.lease_duration_s
        expired = renewed is None or renewed + timedelta(seconds=duration) < now
        if holder and holder != self.identity and not expired:
            return False
        if holder != self.identity:
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = now
        spec.lease_duration_seconds = self.lease_duration_s
        lease.spec = spec
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as exc:
            if exc.status == 409:  # someone renewed/took it between our read and write
                return False
            raise

    def release(self) -> None:
        """Give the Lease up (empty holder) so a standby takes over without waiting."""
        if not self.is_leader:
            return
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = self.clock()
                self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("could not release lease: %s", exc.status)
        self.is_leader = False


class KubeActuator:
    """Scales tiers' Deployments and records Events; only acts while it leads."""

    def __init__(self, api_client: client.ApiClient, namespace: str, deployments: dict[str, str], *,
                 dry_run: bool = False, elector: LeaseElector | None = None,
                 retry: RetryPolicy = RetryPolicy(), sleep: Callable[[float], None] = time.sleep) -> None:
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.deployments = deployments
        self.dry_run = dry_run
        self.elector = elector
        self.retry = retry
        self.sleep = sleep

    def lead(self) -> bool:
        """Run one election round (always leader without an elector)."""
        if self.elector is None:
            return True
        try:
            return self.elector.try_acquire_or_renew()
        except ApiException as exc:
            log.warning("lease round failed: %s %s", exc.status, exc.reason)
            self.elector.is_leader = False
            return False

    def replicas(self, tier: str) -> tuple[int, int]:
        """(spec replicas, ready replicas) of the tier's Deployment."""
        dep = with_retries(lambda: self.apps.read_namespaced_deployment(self.deployments[tier], self.namespace),
                           self.retry, self.sleep)
        status = dep.status
        return (dep.spec.replicas or 0), (status.ready_replicas or 0) if status else 0

    def scale(self, tier: str, replicas: int, reason: str) -> ScaleResult:
        name = self.deployments[tier]
        dry = "All" if self.dry_run else None

        def attempt() -> ScaleResult:
            scale = self.apps.read_namespaced_deployment_scale(name, self.namespace)
            current = scale.spec.replicas if scale.spec and scale.spec.replicas is not None else 0
            if current == replicas:
                return ScaleResult(tier, name, current, replicas, applied=False, dry_run=self.dry_run)
            body = client.V1Scale(
                metadata=client.V1ObjectMeta(name=name, namespace=self.namespace,
                                             resource_version=scale.metadata.resource_version),
                spec=client.V1ScaleSpec(replicas=replicas),
            )
            self.apps.replace_namespaced_deployment_scale(name, self.namespace, body, dry_run=dry,
                                                          field_manager=COMPONENT)
            return ScaleResult(tier, name, current, replicas, applied=not self.dry_run, dry_run=self.dry_run)

        result = with_retries(attempt, self.retry, self.sleep)
        if result.from_replicas != result.to_replicas:
            verb = "ScaledUp" if replicas > result.from_replicas else "ScaledDown"
            self.event(tier, "ScaleDryRun" if self.dry_run else verb,
                       f"{'would scale' if self.dry_run else 'scaled'} {name} from {result.from_replicas} "
                       f"to {replicas}: {reason}"[:1024])
        return result

    def event(self, tier: str | None, reason: str, message: str, warning: bool = False) -> None:
        """Record a core/v1 Event on the tier's Deployment (fleet-wide: on the Lease)."""
        now = _now()
        if tier is not None and tier in self.deployments:
            ref = client.V1ObjectReference(api_version="apps/v1", kind="Deployment",
                                           name=self.deployments[tier], namespace=self.namespace)
        else:
            lease = self.elector.name if self.elector else DEFAULT_LEASE
            ref = client.V1ObjectReference(api_version="coordination.k8s.io/v1", kind="Lease",
                                           name=lease, namespace=self.namespace)
        identity = self.elector.identity if self.elector else COMPONENT
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{ref.name}.", namespace=self.namespace),
            involved_object=ref, reason=reason, message=message, type="Warning" if warning else "Normal",
            source=client.V1EventSource(component=COMPONENT), reporting_component=COMPONENT,
            reporting_instance=identity, first_timestamp=now, last_timestamp=now, count=1,
        )
        try:
            with_retries(lambda: self.core.create_namespaced_event(self.namespace, body), self.retry, self.sleep)
        except ApiException as exc:  # an Event is a record, never a reason to fail the action
            log.warning("could not record event %s: %s", reason, exc.status)


def load_api_client(kubeconfig: str | None, in_cluster: bool) -> client.ApiClient:
    """An ApiClient from a kubeconfig file or the pod's service account."""
    from kubernetes import config as kube_config

    if in_cluster:
        kube_config.load_incluster_config()
        return client.ApiClient()
    return kube_config.new_client_from_config(config_file=kubeconfig)
