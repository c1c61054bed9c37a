"""The kubelet stand-in's heartbeat on both API servers: its node Lease in kube-node-lease and the Ready
condition's heartbeat, written on the real server with the node's own client certificate."""

from __future__ import annotations

import asyncio

from kubernetes import client

from services.common.kube import new_api_client
from sim.local.node_heartbeat import NODE_LEASE_NAMESPACE, NodeHeartbeat
from tests.support.apiservers import ApiServer

NODE = "heartbeat-node"


def _create_node(api_server: ApiServer) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    }
    with api_server.api_client() as api:
        client.CoreV1Api(api).create_node(body)


def test_each_beat_renews_the_lease_and_the_ready_heartbeat(api_server: ApiServer) -> None:
    _create_node(api_server)
    with new_api_client(api_server.node_access(NODE)) as api:
        heartbeat = NodeHeartbeat(api, NODE, lease_seconds=40, status_every_seconds=0.0)
        heartbeat.beat(0.0)
        with api_server.api_client() as admin:
            lease = client.CoordinationV1Api(admin).read_namespaced_lease(NODE, NODE_LEASE_NAMESPACE)
            assert lease.spec.holder_identity == NODE and lease.spec.lease_duration_seconds == 40
            node_uid = client.CoreV1Api(admin).read_node(NODE).metadata.uid
            assert [(o.kind, o.uid) for o in lease.metadata.owner_references] == [("Node", node_uid)]
            first = (lease.metadata.resource_version, lease.spec.renew_time)
            heartbeat.beat(1.0)
            lease = client.CoordinationV1Api(admin).read_namespaced_lease(NODE, NODE_LEASE_NAMESPACE)
            assert lease.metadata.resource_version != first[0] and lease.spec.renew_time >= first[1]
            assert [o.uid for o in lease.metadata.owner_references] == [node_uid]  # kept on renewal
            node = client.CoreV1Api(admin).read_node(NODE)
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert len(ready) == 1 and ready[0].status == "True" and ready[0].last_heartbeat_time is not None
        assert (heartbeat.lease_renewals, heartbeat.status_updates) == (2, 2)


def test_the_status_period_is_slower_than_the_lease(api_server: ApiServer) -> None:
    _create_node(api_server)
    with new_api_client(api_server.node_access(NODE)) as api:
        heartbeat = NodeHeartbeat(api, NODE, lease_seconds=40, status_every_seconds=60.0)
        for second in (0.0, 10.0, 20.0, 61.0):
            heartbeat.beat(second)
    assert (heartbeat.lease_renewals, heartbeat.status_updates) == (4, 2)


def test_a_missing_node_is_logged_and_retried_not_fatal(api_server: ApiServer) -> None:
    """No Node object yet: the beat fails quietly and the task keeps running until asked to stop."""
    if api_server.real is not None:
        _create_node(api_server)  # the node identity may only touch its own Node: exercise the stop path
    with new_api_client(api_server.node_access(NODE)) as api:
        heartbeat = NodeHeartbeat(api, "no-such-node" if api_server.real is None else NODE, lease_seconds=1)

        async def run_briefly() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(heartbeat.run(stop))
            await asyncio.sleep(0.6)
            assert not task.done()
            stop.set()
            await asyncio.wait_for(task, timeout=10)

        asyncio.run(run_briefly())
    assert heartbeat.lease_renewals >= 2
