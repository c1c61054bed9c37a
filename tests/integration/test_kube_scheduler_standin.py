"""The kube-scheduler stand-in against kube-local and a fake scheduler extender written here.

The fake extender speaks kube-scheduler's extender wire format (Go field names, no JSON tags), records what it
receives, answers canned filter / prioritize results, and binds through the official client as HAMi does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes import client

from sim.local.kube_scheduler import KubeSchedulerStandIn
from sim.local.kube_scheduler_config import parse_scheduler_config
from tests.support import free_port

Obj = dict[str, Any]
NVIDIA = ["nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores"]
BIN = Path(sys.executable).parent


def make_api(url: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


def add_node(
    core: client.CoreV1Api,
    name: str,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
) -> None:
    core.create_node(
        {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"unschedulable": True} if unschedulable else {},
        }
    )
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    core.patch_node_status(
        name, {"status": {"capacity": capacity, "allocatable": capacity, "conditions": conditions}}
    )


def pod(
    name: str,
    *,
    scheduler: str = "hami-scheduler",
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    node_selector: dict[str, str] | None = None,
    node: str | None = None,
) -> Obj:
    requests: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
    resources: Obj = {"requests": requests}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    spec: Obj = {
        "schedulerName": scheduler,
        "containers": [{"name": "main", "image": "busybox:1.36", "resources": resources}],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name}, "spec": spec}


def config(url_prefix: str | None, **extender: Any) -> Obj:
    doc: Obj = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "podInitialBackoffSeconds": 1,
        "podMaxBackoffSeconds": 1,
        "profiles": [{"schedulerName": "hami-scheduler"}],
    }
    if url_prefix is not None:
        doc["extenders"] = [
            {
                "urlPrefix": url_prefix,
                "filterVerb": "filter",
                "prioritizeVerb": "prioritize",
                "bindVerb": "bind",
                "weight": 1,
                "nodeCacheCapable": True,
                "httpTimeout": "5s",
                "managedResources": [{"name": n, "ignoredByScheduler": True} for n in NVIDIA],
                **extender,
            }
        ]
    return doc


class FakeExtender:
    """Serves ``<prefix>/filter``, ``/prioritize``, ``/bind``; ``calls`` holds (path, body, content type)."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.calls: list[tuple[str, Obj, str]] = []
        self.failed: dict[str, str] = {}
        self.accept: Callable[[list[str]], list[str]] = lambda names: names
        self.scores: dict[str, int] = {}
        self.bind_errors: list[str] = []
        self._runner: web.AppRunner | None = None

    @staticmethod
    def names(args: Obj) -> list[str]:
        if args.get("NodeNames") is not None:
            return list(args["NodeNames"])
        return [n["metadata"]["name"] for n in args["Nodes"]["items"]]

    async def _record(self, request: web.Request) -> Obj:
        body: Obj = await request.json()
        self.calls.append((request.path, body, request.content_type))
        return body

    async def filter(self, request: web.Request) -> web.Response:
        args = await self._record(request)
        names = [n for n in self.accept(self.names(args)) if n not in self.failed]
        failed = {n: why for n, why in self.failed.items() if n in self.names(args)}
        result: Obj = {"Nodes": None, "NodeNames": None, "FailedNodes": failed, "Error": ""}
        if args.get("NodeNames") is not None:
            result["NodeNames"] = names
        else:
            result["Nodes"] = {"items": [n for n in args["Nodes"]["items"] if n["metadata"]["name"] in names]}
        result["FailedAndUnresolvableNodes"] = None
        return web.json_response(result)

    async def prioritize(self, request: web.Request) -> web.Response:
        args = await self._record(request)
        return web.json_response([{"Host": n, "Score": self.scores.get(n, 0)} for n in self.names(args)])

    async def bind(self, request: web.Request) -> web.Response:
        args = await self._record(request)
        if self.bind_errors:
            return web.json_response({"Error": self.bind_errors.pop(0)})
        binding = {
            "metadata": {"name": args["PodName"], "uid": args["PodUID"]},
            "target": {"kind": "Node", "name": args["Node"]},
        }
        await asyncio.to_thread(
            self.core.create_namespaced_pod_binding,
            args["PodName"],
            args["PodNamespace"],
            binding,
            _preload_content=False,
        )
        return web.json_response({"Error": ""})

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/ext/filter", self.filter)
        app.router.add_post("/ext/prioritize", self.prioritize)
        app.router.add_post("/ext/bind", self.bind)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}/ext"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]


@pytest.fixture
def core(kube_local_url: str) -> Iterator[client.CoreV1Api]:
    api = make_api(kube_local_url)
    yield client.CoreV1Api(api)
    api.close()


@pytest.fixture
async def extender(core: client.CoreV1Api) -> AsyncIterator[FakeExtender]:
    fake = FakeExtender(core)
    yield fake
    await fake.stop()


@pytest.fixture
async def scheduler(kube_local_url: str) -> AsyncIterator[Callable[[Obj], KubeSchedulerStandIn]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None], client.ApiClient]] = []

    def start(doc: Obj) -> KubeSchedulerStandIn:
        api = make_api(kube_local_url)
        standin = KubeSchedulerStandIn(parse_scheduler_config(doc), api, instance="test")
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(standin.run(stop)), api))
        return standin

    yield start
    for stop, task, api in running:
        stop.set()
        await asyncio.wait_for(task, 10)
        api.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


def node_of(core: client.CoreV1Api, name: str) -> str | None:
    value: str | None = core.read_namespaced_pod(name, "default").spec.node_name
    return value


def events(core: client.CoreV1Api, name: str, reason: str) -> list[Any]:
    selector = f"involvedObject.name={name},reason={reason}"
    items: list[Any] = core.list_namespaced_event("default", field_selector=selector).items
    return items


# --- tests -------------------------------------------------------------------------------------------------


async def test_extender_sees_kube_scheduler_request_shapes(core, extender, scheduler):
    add_node(core, "gpu-a")
    add_node(core, "gpu-b")
    add_node(core, "cordoned", unschedulable=True)
    add_node(core, "cpu-only")
    extender.failed = {"cpu-only": "node has no GPU"}
    extender.scores = {"gpu-a": 2, "gpu-b": 8}
    prefix = await extender.start()
    scheduler(config(prefix))
    created = core.create_namespaced_pod("default", pod("p", gpus=1))

    assert await eventually(lambda: node_of(core, "p")) == "gpu-b"
    assert extender.paths() == ["/ext/filter", "/ext/prioritize", "/ext/bind"]
    (_, filter_args, content_type), (_, prio_args, _), (_, bind_args, _) = extender.calls
    assert content_type == "application/json"
    assert set(filter_args) == {"Pod", "Nodes", "NodeNames"}
    assert filter_args["Nodes"] is None
    assert filter_args["NodeNames"] == ["cpu-only", "gpu-a", "gpu-b"]  # the cordoned node never gets there
    assert filter_args["Pod"]["metadata"]["uid"] == created.metadata.uid
    assert filter_args["Pod"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert set(prio_args) == {"Pod", "Nodes", "NodeNames"} and prio_args["NodeNames"] == ["gpu-a", "gpu-b"]
    assert bind_args == {
        "PodName": "p",
        "PodNamespace": "default",
        "PodUID": created.metadata.uid,
        "Node": "gpu-b",
    }

    scheduled = await eventually(lambda: events(core, "p", "Scheduled"))
    assert (
        scheduled[0].type == "Normal" and scheduled[0].message == "Successfully assigned default/p to gpu-b"
    )
    assert scheduled[0].source.component == "hami-scheduler"
    assert events(core, "p", "FailedScheduling") == []


async def test_full_nodes_are_sent_when_not_node_cache_capable(core, extender, scheduler):
    add_node(core, "a")
    add_node(core, "b")
    extender.accept = lambda names: names[-1:]
    prefix = await extender.start()
    scheduler(config(prefix, nodeCacheCapable=False))
    core.create_namespaced_pod("default", pod("p", gpus=1))

    assert await eventually(lambda: node_of(core, "p")) == "b"
    # With one node left there is nothing to prioritize, as in kube-scheduler.
    assert extender.paths() == ["/ext/filter", "/ext/bind"]
    args = extender.calls[0][1]
    assert args["NodeNames"] is None
    assert args["Nodes"]["metadata"] == {}
    items = args["Nodes"]["items"]
    assert [n["metadata"]["name"] for n in items] == ["a", "b"]
    assert items[0]["status"]["allocatable"]["cpu"] == "4"


async def test_pods_without_managed_resources_skip_the_extender_and_respect_node_selector(
    core, extender, scheduler
):
    add_node(core, "zone-a", labels={"zone": "a"})
    add_node(core, "zone-b", labels={"zone": "b"}, cpu="1", memory="1Gi")  # less free room
    prefix = await extender.start()
    scheduler(config(prefix))
    core.create_namespaced_pod("default", pod("anywhere", cpu="500m"))
    core.create_namespaced_pod("default", pod("pinned", cpu="500m", node_selector={"zone": "b"}))
    core.create_namespaced_pod("default", pod("other-scheduler", scheduler="default-scheduler"))

    assert await eventually(lambda: node_of(core, "anywhere")) == "zone-a"  # least allocated
    assert await eventually(lambda: node_of(core, "pinned")) == "zone-b"
    assert extender.calls == []
    assert (await eventually(lambda: events(core, "pinned", "Scheduled")))[0].message.endswith("to zone-b")
    await asyncio.sleep(0.3)
    assert node_of(core, "other-scheduler") is None  # not one of our profiles


async def test_failed_scheduling_event_then_retry_when_extender_accepts(core, extender, scheduler):
    add_node(core, "gpu-a", labels={"gpu": "on"})
    add_node(core, "gpu-b", labels={"gpu": "on"})
    add_node(core, "cpu", labels={"gpu": "off"})
    extender.failed = {"gpu-a": "insufficient GPU memory", "gpu-b": "insufficient GPU memory"}
    prefix = await extender.start()
    standin = scheduler(config(prefix))
    core.create_namespaced_pod("default", pod("p", gpus=1, node_selector={"gpu": "on"}))

    failed = await eventually(lambda: events(core, "p", "FailedScheduling"))
    assert failed[0].type == "Warning"
    assert failed[0].message == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "2 insufficient GPU memory."
    )
    # Retries back off and are counted on the same Event.
    await eventually(lambda: (events(core, "p", "FailedScheduling")[0].count or 0) >= 2)
    assert len(events(core, "p", "FailedScheduling")) == 1
    condition = next(
        c for c in core.read_namespaced_pod("p", "default").status.conditions if c.type == "PodScheduled"
    )
    assert condition.status == "False" and condition.reason == "Unschedulable"
    assert node_of(core, "p") is None

    extender.failed = {}
    assert await eventually(lambda: node_of(core, "p")) in ("gpu-a", "gpu-b")
    assert standin.attempts >= 3
    assert await eventually(lambda: events(core, "p", "Scheduled"))


async def test_unreachable_extender_fails_scheduling_until_it_starts(core, extender, scheduler):
    add_node(core, "a")
    port = free_port()
    scheduler(config(f"http://127.0.0.1:{port}/ext"))
    core.create_namespaced_pod("default", pod("p", gpus=1))

    failed = await eventually(lambda: events(core, "p", "FailedScheduling"))
    assert f'Post "http://127.0.0.1:{port}/ext/filter"' in failed[0].message
    assert "connection refused" in failed[0].message
    await extender.start(port)
    assert await eventually(lambda: node_of(core, "p")) == "a"


async def test_bind_error_is_failed_scheduling_and_retried(core, extender, scheduler):
    add_node(core, "a")
    extender.bind_errors = ["node a has been locked within 5m0s: node lock contention"]
    prefix = await extender.start()
    scheduler(config(prefix))
    core.create_namespaced_pod("default", pod("p", gpus=1))

    failed = await eventually(lambda: events(core, "p", "FailedScheduling"))
    assert failed[0].message == "binding rejected: node a has been locked within 5m0s: node lock contention"
    assert await eventually(lambda: node_of(core, "p")) == "a"
    assert extender.paths().count("/ext/bind") == 2


@pytest.mark.parametrize(("weight", "chosen"), [(1, "idle"), (3, "busy")])
async def test_extender_weight_decides_against_own_score(core, extender, scheduler, weight, chosen):
    add_node(core, "idle")
    add_node(core, "busy")
    core.create_namespaced_pod("default", pod("filler", cpu="2", memory="1Gi", node="busy"))
    # Own least-allocated scores for a 1 cpu / 1Gi pod: idle 81, busy 50. The extender prefers busy by 3:
    # weight 1 adds 30 (80 < 81), weight 3 adds 90 (140 > 81).
    extender.scores = {"busy": 3}
    prefix = await extender.start()
    scheduler(config(prefix, weight=weight))
    core.create_namespaced_pod("default", pod("p", gpus=1, cpu="1", memory="1Gi"))
    assert await eventually(lambda: node_of(core, "p")) == chosen


def test_process_schedules_and_stops_on_sigterm(kube_local_url: str, tmp_path: Path) -> None:
    api = make_api(kube_local_url)
    core = client.CoreV1Api(api)
    add_node(core, "n1")
    cfg = tmp_path / "kube-scheduler.yaml"
    doc = config(None)
    doc["profiles"] = [{"schedulerName": "default-scheduler"}]
    cfg.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen(
        [str(BIN / "kube-vgpu-local"), "kube-scheduler", "--server", kube_local_url, "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        core.create_namespaced_pod("default", pod("p", scheduler="default-scheduler"))
        deadline = time.monotonic() + 20
        while node_of(core, "p") is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "pod was not scheduled"
            time.sleep(0.1)
        assert node_of(core, "p") == "n1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "kube_scheduler_stopped" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        api.close()


def test_process_rejects_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    doc = config("http://127.0.0.1:1/ext")
    doc["extenders"][0]["httpTimeout"] = 30
    doc["extenders"][0]["managedResource"] = []
    cfg.write_text(json.dumps(doc))
    result = subprocess.run(
        [
            str(BIN / "kube-vgpu-local"),
            "kube-scheduler",
            "--server",
            "http://127.0.0.1:1",
            "--config",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "extenders.0.httpTimeout" in result.stderr and "duration" in result.stderr
    assert "extenders.0.managedResource: unknown key" in result.stderr


async def test_an_api_outage_mid_attempt_is_retried_and_the_loop_survives(core, extender, scheduler):
    """A refused connection (urllib3's MaxRetryError, not an ApiException) while writing an attempt's
    outcome used to escape the loop and leave every later pod unscheduled."""
    import urllib3

    add_node(core, "a")
    prefix = await extender.start()
    standin = scheduler(config(prefix))
    outages: list[str] = []
    record = standin.outcomes.record

    async def record_during_outage(pod: Obj, *args: Any) -> None:
        if not outages:
            outages.append(pod["metadata"]["name"])
            raise urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/default/events", "refused")
        await record(pod, *args)

    standin.outcomes.record = record_during_outage  # type: ignore[method-assign]
    core.create_namespaced_pod("default", pod("first", gpus=1))
    assert await eventually(lambda: node_of(core, "first"), timeout=60) == "a"
    assert outages == ["first"]
    core.create_namespaced_pod("default", pod("second", gpus=1))
    assert await eventually(lambda: node_of(core, "second"), timeout=60) == "a"
