"""The kubelet stand-in's node heartbeat, kept the way a kubelet keeps its node alive: the Lease
`kube-node-lease/<node>` renewed every quarter of its duration, and the Ready condition's
`lastHeartbeatTime` refreshed on a slower period. On the real API server the node's own client certificate
does both (the Node authorizer and NodeRestriction allow a node exactly its own Lease and Node status).

Failures are logged and retried on the next beat: an API server outage must not stop the stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.kube import KUBE_ERRORS
from services.common.log import get_logger

log = get_logger("kubelet-standin.heartbeat")

NODE_LEASE_NAMESPACE = "kube-node-lease"
MERGE_PATCH = "application/merge-patch+json"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    node: str,
    duration_seconds: int,
    now: str,
    resource_version: str | None = None,
    node_uid: str | None = None,
) -> dict[str, Any]:
    """The node Lease a kubelet writes: holder = the node, renewed at `now`, owned by the Node object so
    the garbage collector removes it with the Node."""
    metadata: dict[str, Any] = {"name": node, "namespace": NODE_LEASE_NAMESPACE}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if node_uid is not None:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration_seconds, "renewTime": now},
    }


def ready_condition(now: str, since: str) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet stand-in is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": since,
    }


class NodeHeartbeat:
    def __init__(
        self, api: client.ApiClient, node: str, lease_seconds: int = 40, status_every_seconds: float = 60.0
    ) -> None:
        self.node = node
        self.lease_seconds = lease_seconds
        self.status_every_seconds = status_every_seconds
        self.core = client.CoreV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self.since = _now()
        self.lease_renewals = 0
        self.status_updates = 0
        self._last_status = float("-inf")

    def renew_lease(self) -> None:
        now = _now()
        try:
            current = self.leases.read_namespaced_lease(self.node, NODE_LEASE_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: Any = lease_body(self.node, self.lease_seconds, now, node_uid=self._node_uid())
            self.leases.create_namespaced_lease(NODE_LEASE_NAMESPACE, body, _preload_content=False)
        else:
            meta = current.metadata
            version = meta.resource_version if meta is not None else None
            owners = (meta.owner_references or []) if meta is not None else []
            owner_uid = next((o.uid for o in owners if o.kind == "Node"), None)
            body = lease_body(self.node, self.lease_seconds, now, version, node_uid=owner_uid)
            self.leases.replace_namespaced_lease(
                self.node, NODE_LEASE_NAMESPACE, body, _preload_content=False
            )
        self.lease_renewals += 1

    def _node_uid(self) -> str | None:
        try:
            node = self.core.read_node(self.node)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None  # no Node yet: the Lease goes unowned, as a kubelet's first one may
        uid = node.metadata.uid if node.metadata is not None else None
        return str(uid) if uid else None

    def post_ready(self) -> None:
        patch: Any = {"status": {"conditions": [ready_condition(_now(), self.since)]}}
        self.core.patch_node_status(self.node, patch, _content_type=MERGE_PATCH, _preload_content=False)
        self.status_updates += 1

    def beat(self, monotonic_now: float) -> None:
        """One heartbeat: the Lease always, the Ready condition when its period has passed."""
        try:
            self.renew_lease()
        except KUBE_ERRORS as exc:
            log.warning("node_lease_renew_failed", node=self.node, error=str(exc))
        if monotonic_now - self._last_status >= self.status_every_seconds:
            try:
                self.post_ready()
                self._last_status = monotonic_now
            except KUBE_ERRORS as exc:
                log.warning("node_status_update_failed", node=self.node, error=str(exc))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await asyncio.to_thread(self.beat, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.lease_seconds / 4)
