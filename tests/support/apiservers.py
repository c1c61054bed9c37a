"""The API servers an integration test can run against, from one test body: kube-local (our stand-in, a
fresh one per test, no authentication) and the upstream kube-apiserver of sim/controlplane (one per test
session, the deploy's RBAC applied, emptied of what a test created when the test ends).

A test takes the `api_server` fixture (parametrised over both) and reaches the server only through it:
`api_server.admin` for set-up and assertions, `api_server.service_access(SA)` for the process under test,
which on the real server is a token of the deploy's ServiceAccount (its exact rights, as in a cluster)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import KubeAccess
from services.common.kube import new_api_client

API_SERVERS = ("kube-local", "real")
# Namespaces the control plane itself owns; everything else a test made goes when the test ends.
SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


@dataclass
class ApiServer:
    kind: str
    url: str
    admin: KubeAccess
    install_namespace: str = "kube-system"
    real: Any = None  # sim.controlplane.launcher.RealControlPlane for kind "real"
    _service_access: dict[str, KubeAccess] = field(default_factory=dict)

    def service_access(self, service_account: str) -> KubeAccess:
        """How a kube-vgpu process reaches this server: kube-local has no authentication; on the real
        server it is the deploy's ServiceAccount `service_account` in the install namespace."""
        if self.real is None:
            return self.admin
        if service_account not in self._service_access:
            path = self.real.service_kubeconfig(service_account, self.install_namespace)
            self._service_access[service_account] = KubeAccess(kubeconfig=str(path))
        return self._service_access[service_account]

    def api_client(self) -> client.ApiClient:
        return new_api_client(self.admin)

    def node_access(self, node: str) -> KubeAccess:
        """How a kubelet stand-in for `node` reaches this server: kube-local has no authentication; on the
        real server it is the node's own client certificate, as a kubelet's (Node authorizer,
        NodeRestriction)."""
        if self.real is None:
            return self.admin
        return KubeAccess(kubeconfig=str(self.real.node_kubeconfig(node)))


def kube_flags(access: KubeAccess) -> list[str]:
    """The `--set kube.*=` flags that hand a service process `access`."""
    values = access.model_dump(exclude_none=True)
    return [arg for key, value in values.items() for arg in ("--set", f"kube.{key}={value}")]


def start_real(run_dir: Path) -> ApiServer:
    from sim.controlplane.launcher import RealControlPlane

    real = RealControlPlane(run_dir)
    real.start()
    namespace = real.apply_deploy_rbac()
    return ApiServer("real", real.url, real.admin_access(), install_namespace=namespace, real=real)


def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise


def reset_real(server: ApiServer, timeout: float = 60.0) -> None:
    """Remove what a test created: pods (at once, no grace), nodes, leases, quotas, events, webhook
    registrations and namespaces other than the control plane's own and the install namespace, whose
    ServiceAccounts and RBAC stay. Waits until the namespaces are gone, so the next test can reuse names."""
    keep = SYSTEM_NAMESPACES | {server.install_namespace}
    with server.api_client() as api:
        core = client.CoreV1Api(api)
        coordination = client.CoordinationV1Api(api)
        namespaces = [ns.metadata.name for ns in core.list_namespace().items]
        for namespace in namespaces:
            for pod in core.list_namespaced_pod(namespace).items:
                if namespace in ("kube-system",):
                    continue
                _ignore_missing(
                    core.delete_namespaced_pod, pod.metadata.name, namespace, grace_period_seconds=0
                )
            if namespace != "kube-system":  # node Leases too: a Node deleted below may not own its Lease
                for lease in coordination.list_namespaced_lease(namespace).items:
                    _ignore_missing(coordination.delete_namespaced_lease, lease.metadata.name, namespace)
                for quota in core.list_namespaced_resource_quota(namespace).items:
                    _ignore_missing(core.delete_namespaced_resource_quota, quota.metadata.name, namespace)
                core.delete_collection_namespaced_event(namespace)
        for node in core.list_node().items:
            _ignore_missing(core.delete_node, node.metadata.name)
        admission = client.AdmissionregistrationV1Api(api)
        for hook in admission.list_mutating_webhook_configuration().items:
            _ignore_missing(admission.delete_mutating_webhook_configuration, hook.metadata.name)
        doomed = [ns for ns in namespaces if ns not in keep]
        for namespace in doomed:
            _ignore_missing(core.delete_namespace, namespace)
        deadline = time.monotonic() + timeout
        while doomed and time.monotonic() < deadline:
            present = {ns.metadata.name for ns in core.list_namespace().items}
            doomed = [ns for ns in doomed if ns in present]
            if doomed:
                time.sleep(0.2)
        if doomed:
            raise RuntimeError(f"namespaces {doomed} still terminating after {timeout:.0f}s")
