"""The kubectl commands whose typed clients speak protobuf (create namespace, cordon, uncordon, drain,
debug), on kube-local and on the upstream kube-apiserver: each must succeed, say what a cluster says, and
leave the state a cluster would (docs/kubelocal-differences.md#protobuf)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubelocal.conftest import Served

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")

NODE = "pb-kubectl-node"
POD = "pb-kubectl-pod"
KUBECTL_TIMEOUT_SECONDS = 120

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl(served: Served, tmp_path: Path) -> Kubectl:
    """``kubectl(*args)`` against this test's server as its admin; fails the test when kubectl fails."""
    if served.access.kubeconfig:
        kubeconfig = Path(served.access.kubeconfig)
    else:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "local", "cluster": {"server": served.url}}],
                    "users": [{"name": "admin", "user": {}}],
                    "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
                    "current-context": "local",
                }
            ),
            encoding="utf-8",
        )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"), *args],
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
            check=False,
        )
        assert proc.returncode == 0, f"[{served.kind}] kubectl {' '.join(args)} failed:\n{proc.stderr}"
        return proc

    return run


def _node_with_pod(core: client.CoreV1Api) -> None:
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE)))
    core.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=POD),
            spec=client.V1PodSpec(
                node_name=NODE, containers=[client.V1Container(name="main", image="busybox:1.36")]
            ),
        ),
    )


def _pod_exists(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, "default")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_create_namespace_sends_and_gets_protobuf(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    proc = kubectl("create", "namespace", "pb-kubectl", "-v=8")
    assert "namespace/pb-kubectl created" in proc.stdout
    # kubectl's typed client sent a protobuf Namespace and read a protobuf answer.
    assert re.search(r"POST \S+/api/v1/namespaces", proc.stderr)
    assert "Content-Type: application/vnd.kubernetes.protobuf" in proc.stderr
    assert "201 Created" in proc.stderr
    namespace: Any = core.read_namespace("pb-kubectl")
    assert namespace.status.phase == "Active"
    assert namespace.metadata.labels["kubernetes.io/metadata.name"] == "pb-kubectl"


def test_cordon_and_uncordon_mark_the_node(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    _node_with_pod(core)
    assert f"node/{NODE} cordoned" in kubectl("cordon", NODE).stdout
    node: Any = core.read_node(NODE)
    assert node.spec.unschedulable is True
    assert f"node/{NODE} uncordoned" in kubectl("uncordon", NODE).stdout
    node = core.read_node(NODE)
    assert not node.spec.unschedulable


def test_drain_evicts_the_nodes_pods(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    _node_with_pod(core)
    proc = kubectl("drain", NODE, "--ignore-daemonsets", "--force", "--grace-period=0", "--timeout=60s")
    assert f"pod/{POD} evicted" in proc.stdout
    assert f"node/{NODE} drained" in proc.stdout
    assert not _pod_exists(core, POD)
    node: Any = core.read_node(NODE)
    assert node.spec.unschedulable is True


def test_debug_a_node_creates_a_debugging_pod_on_it(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    _node_with_pod(core)
    proc = kubectl("debug", f"node/{NODE}", "--image=busybox:1.36", "--profile=general")
    match = re.search(
        rf"Creating debugging pod (node-debugger-{NODE}-\w+) with container debugger", proc.stdout
    )
    assert match, proc.stdout
    pod: Any = core.read_namespaced_pod(match.group(1), "default")
    assert pod.spec.node_name == NODE
    assert pod.spec.host_pid is True
    assert [c.name for c in pod.spec.containers] == ["debugger"]


def test_debug_a_pod_adds_an_ephemeral_container(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    _node_with_pod(core)
    kubectl("debug", f"pod/{POD}", "--image=busybox:1.36", "-c", "dbg", "--profile=general")
    pod: Any = core.read_namespaced_pod(POD, "default")
    assert [(c.name, c.image) for c in pod.spec.ephemeral_containers] == [("dbg", "busybox:1.36")]
    assert [c.name for c in pod.spec.containers] == ["main"]
