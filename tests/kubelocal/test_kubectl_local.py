"""The kubectl commands a new user types in local mode, against kube-local and against the upstream
kube-apiserver side by side: the same cluster (deploy/local/cluster.yaml's nodes, deploy/local/demo-pods.yaml
applied by kubectl, two pods bound and Running as a kubelet would report them, one FailedScheduling event)
on both, then each command on both, and the outputs compared after dropping what only the clock decides
(AGE, LAST SEEN).

kubectl is the real client (whatever version is on PATH), with default flags: it negotiates Table
responses for `get`, reads the OpenAPI documents for `explain` and for apply's field validation, and sends
protobuf where its typed clients do (create namespace, cordon, drain). Local mode does not serve logs, exec
or ConfigMaps; there kube-local must say so and say what to use instead (sim/kubelocal/unserved.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.config import KubeAccess
from services.common.kube import list_raw, new_api_client, raw_json
from sim.local.cli import register_cluster
from sim.local.cluster import load_cluster
from tests.support.apiservers import ApiServer, reset_real

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILE = REPO / "deploy" / "local" / "cluster.yaml"
DEMO_PODS = REPO / "deploy" / "local" / "demo-pods.yaml"
KUBECTL_TIMEOUT_SECONDS = 120
# What a kubelet would report for the pods the test "runs": node and pod IP.
RUNNING = {"train-small": ("gpu-node-a", "10.244.1.5"), "two-gpus": ("gpu-node-b", "10.244.2.7")}
BOUND_PENDING = {"with-sidecar": "gpu-node-a"}  # bound, its kubelet has not started it yet
# Columns whose values only the clock decides.
CLOCK_COLUMNS = frozenset({"AGE", "LAST SEEN"})
UNSERVED_HINT = "kube-vgpu-local up --control-plane real"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")


# --- one cluster per server -----------------------------------------------------------------------------


@dataclass
class Cluster:
    """One API server as kubectl and the test's admin reach it."""

    kind: str  # "kube-local" or "real"
    kubeconfig: Path
    cache_dir: Path
    api: client.ApiClient
    uids: dict[str, str] = field(default_factory=dict)

    def kubectl(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args],
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl that must succeed; fails the test with this server's kind and kubectl's stderr."""
        proc = self.kubectl(*args, env=env)
        assert proc.returncode == 0, f"[{self.kind}] kubectl {shlex.join(args)} failed:\n{proc.stderr}"
        return proc

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def kube_local_kubeconfig(path: Path, url: str) -> Path:
    """What a user points kubectl at for kube-local: its URL, no credentials (it has no authentication)."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-local", "cluster": {"server": url}}],
        "users": [{"name": "local", "user": {}}],
        "contexts": [{"name": "kube-local", "context": {"cluster": "kube-local", "user": "local"}}],
        "current-context": "kube-local",
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def clusters(kube_local_url: str, real_api_server: ApiServer, tmp_path: Path) -> Iterator[dict[str, Cluster]]:
    """A fresh kube-local and the session's upstream kube-apiserver (emptied when the test ends)."""
    local_api = new_api_client(KubeAccess(server=kube_local_url))
    real_api = real_api_server.api_client()
    pair = {
        "kube-local": Cluster(
            "kube-local",
            kube_local_kubeconfig(tmp_path / "kube-local.kubeconfig", kube_local_url),
            tmp_path / "cache-kube-local",
            local_api,
        ),
        "real": Cluster("real", real_api_server.real.admin_kubeconfig, tmp_path / "cache-real", real_api),
    }
    try:
        yield pair
    finally:
        for api in (local_api, real_api):
            api.close()  # type: ignore[no-untyped-call]
        reset_real(real_api_server)


def both(clusters: dict[str, Cluster]) -> tuple[Cluster, Cluster]:
    return clusters["kube-local"], clusters["real"]


# --- the scenario: a new user's cluster ------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply_demo_pods(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return cluster.ok("apply", "-f", str(DEMO_PODS))


def populate(cluster: Cluster) -> None:
    """Nodes as local mode registers them, the demo pods applied with kubectl, two pods bound and Running
    (status as a kubelet reports it), one bound and not started, and the FailedScheduling event of the pod
    that wants a card type no node has."""
    register_cluster(cluster.api, load_cluster(CLUSTER_FILE))
    apply_demo_pods(cluster)
    core = cluster.core
    for pod in list_raw(core.list_namespaced_pod, namespace="default"):
        cluster.uids[pod["metadata"]["name"]] = pod["metadata"]["uid"]
    placements = {**{name: node for name, (node, _ip) in RUNNING.items()}, **BOUND_PENDING}
    for name, node in placements.items():
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        core.create_namespaced_pod_binding(name, "default", binding, _preload_content=False)
    for name, (_node, ip) in RUNNING.items():
        pod = raw_json(core.read_namespaced_pod, name, "default")
        started = now()
        status = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "192.168.0.10",
            "startTime": started,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": started}
                for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": ctr["name"],
                    "image": ctr["image"],
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started}},
                }
                for ctr in pod["spec"]["containers"]
            ],
        }
        core.patch_namespaced_pod_status(name, "default", {"status": status}, _preload_content=False)
    event: Any = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "wants-v100.kube-vgpu-1", "namespace": "default"},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": "default",
            "name": "wants-v100",
            "uid": cluster.uids["wants-v100"],
        },
        "reason": "FailedScheduling",
        "message": "0/4 nodes are available: 3 CardTypeMismatch, 1 NodeUnfitPod.",
        "type": "Warning",
        "source": {"component": "hami-scheduler"},
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "count": 1,
        "reportingComponent": "hami-scheduler",
    }
    core.create_namespaced_event("default", event)


@pytest.fixture
def populated(clusters: dict[str, Cluster]) -> dict[str, Cluster]:
    for cluster in clusters.values():
        populate(cluster)
    return clusters


# --- reading kubectl's tables ----------------------------------------------------------------------------


def table(output: str) -> list[dict[str, str]]:
    """kubectl's aligned table as rows of {column: cell}: each column starts where its header does
    (headers such as NOMINATED NODE hold one space, columns are at least three apart)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "kubectl printed no table"
    header = lines[0]
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = []
    for line in lines[1:]:
        row = {}
        for index, (start, name) in enumerate(spans):
            end = spans[index + 1][0] if index + 1 < len(spans) else len(line)
            row[name] = line[start:end].strip()
        rows.append(row)
    return [{"": header}, *rows]


def comparable(output: str, keep: Any = None) -> list[dict[str, str]]:
    """The table without the clock's columns, rows in kubectl's order (optionally filtered by `keep`)."""
    header, *rows = table(output)
    columns = [name for name in re.findall(r"\S+(?: \S+)*", header[""]) if name not in CLOCK_COLUMNS]
    kept = [row for row in rows if keep is None or keep(row)]
    return [{"columns": " | ".join(columns)}, *({c: row[c] for c in columns} for row in kept)]


def assert_same_table(local: str, real: str, keep: Any = None) -> list[dict[str, str]]:
    mine, theirs = comparable(local, keep), comparable(real, keep)
    assert mine == theirs, f"kube-local:\n{local}\nreal kube-apiserver:\n{real}"
    return mine


# --- the commands ----------------------------------------------------------------------------------------


def test_apply_demo_pods_with_validation(clusters: dict[str, Cluster], tmp_path: Path) -> None:
    """`kubectl apply -f deploy/local/demo-pods.yaml` (validation on: kubectl asks the server to reject
    unknown fields), the quantities as the server stores them, the same apply again, and a manifest with a
    misspelt field, refused by both."""
    local, real = both(clusters)
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(DEMO_PODS.read_text()) if doc]
    first = {c.kind: apply_demo_pods(c) for c in (local, real)}
    assert first["kube-local"].stdout == first["real"].stdout == "".join(f"pod/{n} created\n" for n in names)
    assert first["kube-local"].stderr == first["real"].stderr == ""
    # The API server stores quantities as strings ("1" for the YAML integer 1), so a second apply of a file
    # that writes them as integers finds a difference to patch and says "configured".
    limits = "jsonpath={.spec.containers[0].resources.limits}"
    stored = {c.kind: c.ok("get", "pod", "train-small", "-o", limits).stdout for c in (local, real)}
    assert stored["kube-local"] == stored["real"]
    assert json.loads(stored["real"]) == {
        "nvidia.com/gpu": "1",
        "nvidia.com/gpucores": "30",
        "nvidia.com/gpumem": "4096",
    }
    again = {c.kind: apply_demo_pods(c) for c in (local, real)}
    assert again["kube-local"].stdout == again["real"].stdout
    assert re.fullmatch(r"(pod/\S+ (configured|unchanged)\n)+", again["real"].stdout), again["real"].stdout
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: typo, namespace: default}\n"
        "spec:\n  containers:\n    - name: main\n      image: example/main:1\n      imagePullPolice: Always\n"
    )
    refused = {c.kind: c.kubectl("apply", "-f", str(typo)) for c in (local, real)}
    for kind, proc in refused.items():
        assert proc.returncode != 0, f"[{kind}] a misspelt field was accepted"
        assert 'unknown field "spec.containers[0].imagePullPolice"' in proc.stderr, f"[{kind}] {proc.stderr}"


def test_get_pods_wide(populated: dict[str, Cluster]) -> None:
    local, real = both(populated)
    rows = assert_same_table(
        local.ok("get", "pods", "-o", "wide").stdout, real.ok("get", "pods", "-o", "wide").stdout
    )
    assert (
        rows[0]["columns"]
        == "NAME | READY | STATUS | RESTARTS | IP | NODE | NOMINATED NODE | READINESS GATES"
    )
    by_name = {row["NAME"]: row for row in rows[1:]}
    assert (by_name["train-small"]["READY"], by_name["train-small"]["STATUS"]) == ("1/1", "Running")
    assert (by_name["train-small"]["IP"], by_name["train-small"]["NODE"]) == ("10.244.1.5", "gpu-node-a")
    assert (by_name["with-sidecar"]["READY"], by_name["with-sidecar"]["NODE"]) == ("0/2", "gpu-node-a")
    assert by_name["wants-v100"]["STATUS"] == "Pending" and by_name["wants-v100"]["NODE"] == "<none>"


def test_get_nodes_wide(populated: dict[str, Cluster]) -> None:
    local, real = both(populated)
    rows = assert_same_table(
        local.ok("get", "nodes", "-o", "wide").stdout, real.ok("get", "nodes", "-o", "wide").stdout
    )
    assert rows[0]["columns"].startswith("NAME | STATUS | ROLES | VERSION | INTERNAL-IP | EXTERNAL-IP")
    assert [row["NAME"] for row in rows[1:]] == ["cpu-node", "gpu-node-a", "gpu-node-b", "gpu-node-c"]
    assert {row["STATUS"] for row in rows[1:]} == {"Ready"}


def test_get_events(populated: dict[str, Cluster]) -> None:
    """The real control plane's node lifecycle controller adds RegisteredNode events that local mode,
    having no controllers, does not: the rows compared are the pods' events."""
    local, real = both(populated)
    rows = assert_same_table(
        local.ok("get", "events").stdout,
        real.ok("get", "events").stdout,
        keep=lambda row: row["OBJECT"].startswith("pod/"),
    )
    assert rows[0]["columns"] == "TYPE | REASON | OBJECT | MESSAGE"
    assert rows[1:] == [
        {
            "TYPE": "Warning",
            "REASON": "FailedScheduling",
            "OBJECT": "pod/wants-v100",
            "MESSAGE": "0/4 nodes are available: 3 CardTypeMismatch, 1 NodeUnfitPod.",
        }
    ]


def test_explain_pod_spec_containers(clusters: dict[str, Cluster]) -> None:
    local, real = both(clusters)
    mine = local.ok("explain", "pod.spec.containers").stdout
    theirs = real.ok("explain", "pod.spec.containers").stdout
    assert mine == theirs
    assert "FIELD: containers <[]Container>" in mine and re.search(r"^  image\t<string>$", mine, re.M)


def test_edit_with_an_editor(populated: dict[str, Cluster]) -> None:
    """`kubectl edit pod` opens $KUBE_EDITOR (here a sed command, as GNU sed -i takes it) on the object and
    sends what changed."""
    sed = "sed -i -e s#example/trainer:1#example/trainer:2#"
    outputs = {}
    for cluster in both(populated):
        edited = cluster.ok("edit", "pod", "train-small", env={"KUBE_EDITOR": sed})
        outputs[cluster.kind] = edited.stdout
        image = cluster.ok("get", "pod", "train-small", "-o", "jsonpath={.spec.containers[0].image}").stdout
        assert image == "example/trainer:2", f"[{cluster.kind}] {image}"
    assert outputs["kube-local"] == outputs["real"] == "pod/train-small edited\n"


def test_create_namespace(clusters: dict[str, Cluster]) -> None:
    outputs = {}
    for cluster in both(clusters):
        outputs[cluster.kind] = cluster.ok("create", "namespace", "x").stdout
        again = cluster.kubectl("create", "namespace", "x")
        assert again.returncode != 0 and 'namespaces "x" already exists' in again.stderr, again.stderr
    assert outputs["kube-local"] == outputs["real"] == "namespace/x created\n"
    local, real = both(clusters)
    rows = assert_same_table(
        local.ok("get", "namespace", "x").stdout, real.ok("get", "namespace", "x").stdout
    )
    assert rows[1:] == [{"NAME": "x", "STATUS": "Active"}]


def test_cordon_and_uncordon(populated: dict[str, Cluster]) -> None:
    local, real = both(populated)
    for verb, status in (("cordon", "Ready,SchedulingDisabled"), ("uncordon", "Ready")):
        done = {c.kind: c.ok(verb, "gpu-node-a").stdout for c in (local, real)}
        assert done["kube-local"] == done["real"] == f"node/gpu-node-a {verb}ed\n"
        rows = assert_same_table(
            local.ok("get", "node", "gpu-node-a").stdout, real.ok("get", "node", "gpu-node-a").stdout
        )
        assert rows[1]["STATUS"] == status


class KubeletFinishesTermination:
    """What a node's kubelet does for a pod evicted with a grace period: stop its containers, then remove
    it (a delete with grace 0). The upstream server leaves such a pod Terminating until then (there is no
    kubelet here), and drain waits for it to go; kube-local removes it at once, so this finds nothing."""

    def __init__(self, cluster: Cluster, node: str) -> None:
        self._core = cluster.core
        self._node = node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{node}", daemon=True)
        self.finished: list[str] = []

    def __enter__(self) -> KubeletFinishesTermination:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            pods = list_raw(
                self._core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self._node}"
            )
            for pod in pods:
                meta = pod["metadata"]
                if not meta.get("deletionTimestamp"):
                    continue
                try:
                    self._core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0)
                    self.finished.append(meta["name"])
                except ApiException as exc:
                    if exc.status != 404:
                        raise


def test_drain(populated: dict[str, Cluster]) -> None:
    """`kubectl drain --ignore-daemonsets --force` cordons the node and evicts its pods (bare pods need
    --force), then the node is empty and unschedulable."""
    outputs: dict[str, tuple[list[str], list[str]]] = {}
    for cluster in both(populated):
        with KubeletFinishesTermination(cluster, "gpu-node-a"):
            drained = cluster.ok("drain", "gpu-node-a", "--ignore-daemonsets", "--force", "--timeout=90s")
        outputs[cluster.kind] = (sorted(drained.stdout.splitlines()), sorted(drained.stderr.splitlines()))
        left = list_raw(cluster.core.list_pod_for_all_namespaces, field_selector="spec.nodeName=gpu-node-a")
        assert left == [], f"[{cluster.kind}] {[p['metadata']['name'] for p in left]} still on the node"
        assert raw_json(cluster.core.read_node, "gpu-node-a")["spec"].get("unschedulable") is True
    assert outputs["kube-local"] == outputs["real"]
    stdout, stderr = outputs["real"]
    assert "node/gpu-node-a drained" in stdout and "pod/train-small evicted" in stdout
    assert "pod/with-sidecar evicted" in stdout
    assert any("deleting Pods that declare no controller" in line for line in stderr), stderr


@pytest.mark.parametrize(
    ("command", "served_on_real"),
    [
        (("logs", "train-small"), False),
        (("exec", "train-small", "--", "nvidia-smi"), False),
        (("get", "configmaps"), True),
    ],
    ids=["logs", "exec", "get-configmaps"],
)
def test_what_local_mode_does_not_serve(
    populated: dict[str, Cluster], command: tuple[str, ...], served_on_real: bool
) -> None:
    """kube-local refuses with a message that says local mode does not serve it and what to use instead;
    the upstream server answers in its own way (ConfigMaps it serves; logs and exec fail without a
    kubelet), never with local mode's message."""
    local, real = both(populated)
    mine = local.kubectl(*command)
    assert mine.returncode != 0, f"kube-local served kubectl {' '.join(command)}:\n{mine.stdout}"
    assert "local mode" in mine.stderr and UNSERVED_HINT in mine.stderr, mine.stderr
    theirs = real.kubectl(*command)
    assert (theirs.returncode == 0) is served_on_real, theirs.stderr
    assert "local mode" not in theirs.stderr and theirs.stderr.strip() != mine.stderr.strip()
