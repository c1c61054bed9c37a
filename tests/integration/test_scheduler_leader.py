"""Leadership (docs/hami-wire.md#leader-election) against kube-local and the upstream kube-apiserver: two
extender replicas follow kube-scheduler's Lease. On the real server the replicas run as the deploy's
scheduler ServiceAccount, so they reach the Lease (in the install namespace, where the deploy's Role
covers it) and their own pods only with the rights the deploy grants.

Only the replica whose identity prefixes the Lease holder (and whose Lease is still valid) binds; the other
answers binds with "not the leader" and keeps filtering from its cache. Each replica labels its own pod
`hami.io/scheduler-role: leader|follower`, and gaining leadership runs a registration pass (seen here as
the node handshake being written again)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from kubernetes import client

from services.common.codecs import encode_node_devices
from services.common.model import DeviceInfo
from services.scheduler.config import SchedulerConfig
from services.scheduler.leader import LeaderState
from services.scheduler.runtime import SchedulerRuntime
from tests.support import poll_until
from tests.support.apiservers import ApiServer

NS = "default"
MERGE = "application/merge-patch+json"
LOCK = "hami.io/mutex.lock"
HANDSHAKE = "hami.io/node-handshake"
ROLE = "hami.io/scheduler-role"
LEASE = "hami-scheduler"
NODE = "gpu-1"


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(holder: str, renewed: datetime, duration: int = 60) -> dict[str, Any]:
    return {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": micro_time(renewed)}


class Cluster:
    """Set-up and assertions as the cluster admin; the Lease writes stand in for kube-scheduler."""

    def __init__(self, server: ApiServer) -> None:
        # The extenders' own pods and kube-scheduler's Lease live in the install namespace (the deploy's
        # Lease Role is namespaced there); the workload pods in `default`.
        self.system = server.install_namespace
        self.api = server.api_client()
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    def raw(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        return json.loads(call(*args, _preload_content=False, **kwargs).data)

    def add_node(self) -> None:
        devices = [
            DeviceInfo(id=f"GPU-{NODE}-{i}", index=i, count=10, devmem=16000, devcore=100, type="NVIDIA-T4")
            for i in range(2)
        ]
        body: Any = {
            "metadata": {
                "name": NODE,
                "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devices)},
            },
            "status": {"allocatable": {"nvidia.com/gpu": "20"}},
        }
        self.core.create_node(body)

    def add_pod(self, name: str, gpu: bool = True, namespace: str = NS) -> dict[str, Any]:
        limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"} if gpu else {}
        body: Any = {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "img", "resources": {"limits": limits}}]},
        }
        created: dict[str, Any] = self.raw(self.core.create_namespaced_pod, namespace, body)
        return created

    def pod(self, name: str, namespace: str = NS) -> dict[str, Any]:
        found: dict[str, Any] = self.raw(self.core.read_namespaced_pod, name, namespace)
        return found

    def role(self, pod: str) -> str | None:
        value = (self.pod(pod, self.system)["metadata"].get("labels") or {}).get(ROLE)
        return value if isinstance(value, str) else None

    def node_annotations(self) -> dict[str, str]:
        found: dict[str, str] = self.raw(self.core.read_node, NODE)["metadata"].get("annotations") or {}
        return found

    def patch_node_annotations(self, annotations: dict[str, str | None]) -> None:
        body: Any = {"metadata": {"annotations": annotations}}
        self.core.patch_node(NODE, body, _content_type=MERGE, _preload_content=False)

    def release_lock(self) -> None:
        """What the device plugin's Allocate does after a bind."""
        self.patch_node_annotations({LOCK: None})

    def set_lease(self, spec: dict[str, Any]) -> None:
        body: Any = {"metadata": {"name": LEASE, "namespace": self.system}, "spec": spec}
        try:
            self.coordination.create_namespaced_lease(self.system, body, _preload_content=False)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            patch: Any = {"spec": spec}
            self.coordination.patch_namespaced_lease(
                LEASE, self.system, patch, _content_type=MERGE, _preload_content=False
            )


def config(server: ApiServer, identity: str) -> SchedulerConfig:
    """A replica as the deploy runs it: the scheduler ServiceAccount, kube-scheduler's Lease and its own
    pod in the install namespace."""
    return SchedulerConfig.model_validate(
        {
            "http_bind": "127.0.0.1:0",
            "metrics_bind_address": "127.0.0.1:0",
            "grpc_bind": "127.0.0.1:0",
            "kube": server.service_access("kube-vgpu-scheduler"),
            "leader_elect": True,
            "identity": identity,
            "lease_name": LEASE,
            "lease_namespace": server.install_namespace,
            "pod_name": identity,
            "pod_namespace": server.install_namespace,
            # The periodic pass must not write handshakes during the test: only a gained leadership does.
            "health_interval_seconds": 3600,
            "bind_lock_wait_seconds": 30,
            "emit_events": False,
            "resync_seconds": 0,
        }
    )


class Replica:
    def __init__(self, runtime: SchedulerRuntime, session: aiohttp.ClientSession) -> None:
        self.runtime = runtime
        self.session = session
        self.name = runtime.cfg.identity

    async def post(self, verb: str, body: Any) -> Any:
        async with self.session.post(f"http://127.0.0.1:{self.runtime.http_port}/{verb}", json=body) as resp:
            assert resp.status == 200
            return await resp.json()

    async def bind(self, pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        result = await self.post(
            "bind", {"PodName": meta["name"], "PodNamespace": NS, "PodUID": meta["uid"], "Node": NODE}
        )
        error: str = result["Error"]
        return error

    async def filter(self, pod: dict[str, Any]) -> list[str]:
        result = await self.post("filter", {"Pod": pod, "NodeNames": [NODE]})
        assert result["Error"] == ""
        names: list[str] = result["NodeNames"] or []
        return names

    def monitored(self, leader: bool) -> bool:
        monitor = self.runtime.leader_monitor
        return monitor is not None and monitor.leader is leader and monitor.labelled is leader

    def node_cached(self) -> bool:
        return self.runtime.cache.node_names() == [NODE]

    def handshake_cached(self) -> str | None:
        state = self.runtime.cache.node_state(NODE)
        return state.handshake if state is not None else None

    @property
    def gains(self) -> int:
        monitor = self.runtime.leader_monitor
        return monitor.gains if monitor is not None else 0


async def test_only_the_lease_holder_binds_and_labels_follow(api_server: ApiServer) -> None:
    cluster = Cluster(api_server)
    cluster.add_node()
    for name in ("sched-a", "sched-b"):
        cluster.add_pod(name, gpu=False, namespace=cluster.system)  # the extenders' own pods
    async with aiohttp.ClientSession() as session:
        a = Replica(SchedulerRuntime(config(api_server, "sched-a")), session)
        b = Replica(SchedulerRuntime(config(api_server, "sched-b")), session)
        try:
            for replica in (a, b):
                await replica.runtime.start()
            await poll_until(lambda: a.runtime.ready() and b.runtime.ready(), "caches synced")
            await poll_until(lambda: a.node_cached() and b.node_cached(), "node cached")

            # No Lease: nobody leads, both pods are labelled follower, nobody writes handshakes.
            await poll_until(lambda: a.monitored(False) and b.monitored(False), "both followers")
            assert (cluster.role("sched-a"), cluster.role("sched-b")) == ("follower", "follower")
            first = cluster.add_pod("job-1")
            assert "not the leader" in await a.bind(first)
            assert HANDSHAKE not in cluster.node_annotations()

            # kube-scheduler in pod sched-a holds the Lease: A binds, B refuses but still filters.
            cluster.set_lease(lease_spec("sched-a_4f1c9a", datetime.now(UTC)))
            await poll_until(lambda: a.monitored(True) and b.monitored(False), "A leads")
            assert (cluster.role("sched-a"), cluster.role("sched-b")) == ("leader", "follower")
            # Gaining leadership ran a registration pass: the node handshake request is written.
            await poll_until(lambda: HANDSHAKE in cluster.node_annotations(), "handshake by A")
            assert cluster.node_annotations()[HANDSHAKE].startswith("Requesting_")
            assert (a.gains, b.gains) == (1, 0)
            second = cluster.add_pod("job-2")
            assert await b.filter(second) == [NODE]
            error = await b.bind(second)
            assert "not the leader" in error, error
            assert cluster.pod("job-2")["spec"].get("nodeName") is None
            assert await a.bind(first) == ""
            assert cluster.pod("job-1")["spec"]["nodeName"] == NODE
            cluster.release_lock()

            # Handover to sched-b: B binds, A refuses; the labels swap; B's gain runs its own pass.
            cluster.patch_node_annotations({HANDSHAKE: None})
            await poll_until(lambda: b.handshake_cached() is None, "handshake removal seen by B")
            cluster.set_lease(lease_spec("sched-b_77d02e", datetime.now(UTC)))
            await poll_until(lambda: a.monitored(False) and b.monitored(True), "B leads")
            assert (cluster.role("sched-a"), cluster.role("sched-b")) == ("follower", "leader")
            await poll_until(lambda: HANDSHAKE in cluster.node_annotations(), "handshake by B")
            assert (a.gains, b.gains) == (1, 1)
            error = await a.bind(second)
            assert "not the leader" in error, error
            assert await a.filter(second) == [NODE]  # the follower still filters from its cache
            assert await b.bind(second) == ""
            assert cluster.pod("job-2")["spec"]["nodeName"] == NODE
            cluster.release_lock()

            # Expired Lease (kube-scheduler stopped renewing long ago): neither binds, both are followers.
            cluster.set_lease(lease_spec("sched-b_77d02e", datetime.now(UTC) - timedelta(minutes=5)))
            await poll_until(lambda: a.monitored(False) and b.monitored(False), "nobody leads")
            assert (cluster.role("sched-a"), cluster.role("sched-b")) == ("follower", "follower")
            third = cluster.add_pod("job-3")
            for replica in (a, b):
                error = await replica.bind(third)
                assert "not the leader" in error, (replica.name, error)
                assert await replica.filter(third) == [NODE]
            assert cluster.pod("job-3")["spec"].get("nodeName") is None
        finally:
            for replica in (a, b):
                await replica.runtime.stop()
            cluster.api.close()


async def test_role_label_skipped_without_pod_name(api_server: ApiServer) -> None:
    cfg = config(api_server, "sched-x").model_copy(update={"pod_name": "", "leader_elect": False})
    runtime = SchedulerRuntime(cfg)
    await runtime.start()
    try:
        monitor = runtime.leader_monitor
        assert monitor is not None
        await poll_until(lambda: monitor.leader is True, "always leader without leader_elect")
        assert monitor.labelled is None  # nothing to label
        assert monitor.gains == 1
    finally:
        await runtime.stop()


def test_lease_validity_rules() -> None:
    """Holder prefix, local observation window and renewTime, with fake clocks."""
    mono = [100.0]
    wall = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]
    state = LeaderState(enabled=True, identity="sched-a", monotonic=lambda: mono[0], clock=lambda: wall[0])
    assert not state.is_leader()  # no Lease seen
    lease = {"spec": lease_spec("sched-a_1", wall[0], duration=10)}
    state.on_lease_event("ADDED", lease)
    assert state.is_leader()
    mono[0] += 9.5
    wall[0] += timedelta(seconds=9.5)
    assert state.is_leader()
    mono[0] += 1  # not renewed within leaseDurationSeconds of when it was last seen changing
    wall[0] += timedelta(seconds=1)
    assert not state.is_leader()
    state.on_lease_event("MODIFIED", {"spec": lease_spec("sched-a_1", wall[0], duration=10)})
    assert state.is_leader()  # renewed
    # A Lease renewed long ago, seen for the first time (a restart): not leadership.
    stale = LeaderState(enabled=True, identity="sched-a", monotonic=lambda: mono[0], clock=lambda: wall[0])
    stale.on_lease_event("ADDED", {"spec": lease_spec("sched-a_1", wall[0] - timedelta(seconds=11), 10)})
    assert not stale.is_leader()
    # Without a readable renewTime only the local window counts.
    stale.on_lease_event("MODIFIED", {"spec": {"holderIdentity": "sched-a_1", "leaseDurationSeconds": 10}})
    assert stale.is_leader()
    state.on_lease_event("MODIFIED", {"spec": lease_spec("sched-b_1", wall[0], duration=10)})
    assert not state.is_leader()
    state.on_lease_event("DELETED", {})
    assert not state.is_leader()
    assert LeaderState(enabled=False, identity="x").is_leader()
