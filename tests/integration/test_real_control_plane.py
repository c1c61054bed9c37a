"""The launcher of the real upstream control plane (sim/controlplane): one etcd + kube-apiserver +
kube-controller-manager for the whole module, then the deploy's RBAC enforced by the real RBAC
authorizer, node credentials confined by the Node authorizer and NodeRestriction, the controllers at
work, and the real kube-scheduler binding a pod as the deploy's ServiceAccount."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from sim.controlplane.launcher import BinariesUnavailable, ControlPlaneError, RealControlPlane

REPO = Path(__file__).resolve().parents[2]
DEV_OVERLAY = REPO / "deploy" / "kustomize" / "overlays" / "dev"
SCHEDULER_NAME = "hami-scheduler"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealControlPlane]:
    plane = RealControlPlane(tmp_path_factory.mktemp("real-control-plane"))
    try:
        plane.start()
    except BinariesUnavailable as error:
        pytest.skip(f"the upstream control plane cannot be built here: {error}")
    try:
        yield plane
    finally:
        plane.stop()
        plane.stop()  # idempotent
        assert not plane.alive() and plane.processes == []


@pytest.fixture(scope="module")
def install_namespace(control_plane: RealControlPlane) -> str:
    return control_plane.apply_deploy_rbac(DEV_OVERLAY)


@pytest.fixture(scope="module")
def admin(control_plane: RealControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig)))


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with only --kubeconfig: the kubeconfig alone must carry server, CA and credentials."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, check=False
    )


def can_i(kubeconfig: Path, *args: str) -> bool:
    """`kubectl auth can-i` (a SelfSubjectAccessReview) for the kubeconfig's own identity."""
    answer = kubectl(kubeconfig, "auth", "can-i", *args)
    assert answer.returncode in (0, 1), answer.stderr
    return answer.returncode == 0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll until true; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ready_node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "stand-in node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "capacity": resources,
            "allocatable": resources,
        },
    }


def forbidden(call: Callable[[], object]) -> str:
    """The API server's 403 message for `call`."""
    with pytest.raises(client.ApiException) as raised:
        call()
    assert raised.value.status == 403, raised.value.body
    return str(raised.value.body)


def test_admin_kubeconfig_needs_no_other_flag(control_plane: RealControlPlane) -> None:
    assert control_plane.url.startswith("https://127.0.0.1:")
    assert control_plane.startup_seconds is not None
    listed = kubectl(control_plane.admin_kubeconfig, "get", "namespaces", "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert {"namespace/default", "namespace/kube-system"} <= set(listed.stdout.split())
    assert control_plane.admin_access().kubeconfig == str(control_plane.admin_kubeconfig)
    assert [process.name for process in control_plane.processes] == [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    ]
    assert all(process.log_path.is_file() for process in control_plane.processes)
    control_plane.check_alive()


# (service account, can-i arguments the deploy grants, can-i arguments it must not grant)
DEPLOY_RIGHTS = [
    (
        "kube-vgpu-scheduler",
        [
            ("patch", "nodes"),
            ("create", "pods", "--subresource=binding", "-n", "default"),
            ("watch", "resourcequotas", "-A"),
            ("update", "leases/hami-scheduler", "-n", "kube-vgpu"),
        ],
        [
            ("delete", "namespaces"),
            ("get", "secrets", "-n", "kube-vgpu"),
            (
                "create",
                "pods",
                "-n",
                "default",
            ),  # system:kube-scheduler may delete (preempt) pods, never create
            ("update", "leases/other", "-n", "kube-vgpu"),
        ],
    ),
    (
        "kube-vgpu-device-plugin",
        [("patch", "nodes"), ("patch", "nodes", "--subresource=status"), ("watch", "pods", "-A")],
        [
            ("create", "pods", "--subresource=binding", "-n", "default"),
            ("get", "secrets", "-A"),
            ("delete", "nodes"),
        ],
    ),
    (
        "kube-vgpu-webhook",
        [("list", "pods", "-A"), ("watch", "nodes")],
        [("patch", "nodes"), ("get", "secrets", "-A"), ("delete", "namespaces")],
    ),
    (
        "kube-vgpu-certgen",
        [
            ("create", "secrets", "-n", "kube-vgpu"),
            ("patch", "secrets/kube-vgpu-webhook-tls", "-n", "kube-vgpu"),
            ("patch", "mutatingwebhookconfigurations/kube-vgpu-webhook"),
        ],
        [
            ("get", "secrets/other", "-n", "kube-vgpu"),
            ("list", "secrets", "-n", "kube-vgpu"),
            ("delete", "namespaces"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("service_account", "granted", "refused"), DEPLOY_RIGHTS, ids=[r[0] for r in DEPLOY_RIGHTS]
)
def test_service_account_has_exactly_the_deploys_rights(
    control_plane: RealControlPlane,
    install_namespace: str,
    service_account: str,
    granted: list[tuple[str, ...]],
    refused: list[tuple[str, ...]],
) -> None:
    assert install_namespace == "kube-vgpu"
    kubeconfig = control_plane.service_kubeconfig(service_account, install_namespace)
    whoami = kubectl(kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout == f"system:serviceaccount:{install_namespace}:{service_account}"
    for args in granted:
        assert can_i(kubeconfig, *args), f"{service_account} should be allowed to {' '.join(args)}"
    for args in refused:
        assert not can_i(kubeconfig, *args), f"{service_account} must not be allowed to {' '.join(args)}"


def test_token_is_enforced_on_real_requests(control_plane: RealControlPlane, install_namespace: str) -> None:
    kubeconfig = control_plane.service_kubeconfig("kube-vgpu-scheduler", install_namespace)
    assert kubectl(kubeconfig, "get", "nodes").returncode == 0
    denied = kubectl(kubeconfig, "get", "secrets", "-n", install_namespace)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr


def test_node_credentials_reach_only_their_own_node(
    control_plane: RealControlPlane, admin: client.CoreV1Api
) -> None:
    """What holds on v1.37: the Node authorizer lets `system:node:node-a` create, read and patch the
    status of Node node-a only (reading another Node is refused by the authorizer, which checks the
    name), and NodeRestriction refuses creating or modifying any other Node."""
    node_a = client.CoreV1Api(
        config.new_client_from_config(config_file=str(control_plane.node_kubeconfig("node-a")))
    )
    node_a.create_node(ready_node("node-a"))
    admin.create_node(ready_node("node-b"))

    patched = node_a.patch_node_status("node-a", {"status": {"allocatable": {"cpu": "7"}}})
    assert patched.status.allocatable["cpu"] == "7"
    assert node_a.read_node("node-a").metadata.name == "node-a"

    assert "not allowed to modify node" in forbidden(
        lambda: node_a.patch_node_status("node-b", {"status": {"allocatable": {"cpu": "7"}}})
    )
    assert "not allowed to modify node" in forbidden(lambda: node_a.create_node(ready_node("node-c")))
    assert "only its own Node object" in forbidden(lambda: node_a.read_node("node-b"))
    forbidden(lambda: node_a.list_namespaced_secret("default"))


def test_controllers_run(control_plane: RealControlPlane, admin: client.CoreV1Api) -> None:
    """The serviceaccount controller fills a new namespace, the namespace controller empties and removes
    a deleted one (its ServiceAccount with it), and the node lifecycle controller lifts the not-ready
    taint TaintNodesByCondition put on a Ready node."""
    admin.create_namespace({"metadata": {"name": "tenant-a"}})
    wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in admin.list_namespaced_service_account("tenant-a").items
        ),
        "the default ServiceAccount in tenant-a",
    )
    admin.delete_namespace("tenant-a")

    def namespace_gone() -> bool:
        try:
            admin.read_namespace("tenant-a")
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(namespace_gone, "namespace tenant-a to be deleted")

    admin.create_node(ready_node("node-taint"))
    wait_for(lambda: not admin.read_node("node-taint").spec.taints, "the not-ready taint to be lifted")


def test_real_kube_scheduler_binds_a_pod(
    control_plane: RealControlPlane, install_namespace: str, admin: client.CoreV1Api
) -> None:
    scheduler_config: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        # The Lease the deploy's Role lets the scheduler's ServiceAccount hold.
        "leaderElection": {
            "leaderElect": True,
            "resourceLock": "leases",
            "resourceName": "hami-scheduler",
            "resourceNamespace": install_namespace,
        },
        "profiles": [{"schedulerName": SCHEDULER_NAME}],
    }
    control_plane.start_scheduler(scheduler_config, "kube-vgpu-scheduler", install_namespace)
    assert control_plane.processes[-1].name == "kube-scheduler"
    admin.create_node(ready_node("worker-1", labels={"pool": "scheduling"}))
    admin.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "plain"},
            "spec": {
                "schedulerName": SCHEDULER_NAME,
                "nodeSelector": {"pool": "scheduling"},
                "containers": [{"name": "main", "image": "registry.invalid/pause:1"}],
            },
        },
    )
    wait_for(
        lambda: admin.read_namespaced_pod("plain", "default").spec.node_name == "worker-1", "the pod bound"
    )
    control_plane.check_alive()


def test_check_alive_names_the_dead_process_and_supervise_relaunches_it(
    control_plane: RealControlPlane, install_namespace: str
) -> None:
    """Runs last: a second scheduler replica (standing by for the Lease) is killed, then the
    controller-manager; supervise relaunches each, healthy, on its own command line."""
    config_dict: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {
            "leaderElect": True,
            "resourceLock": "leases",
            "resourceName": "hami-scheduler",
            "resourceNamespace": install_namespace,
        },
        "profiles": [{"schedulerName": SCHEDULER_NAME}],
    }
    control_plane.start_scheduler(config_dict, "kube-vgpu-scheduler", install_namespace)
    replica = control_plane.processes[-1]
    assert replica.name == "kube-scheduler-2"
    replica.popen.send_signal(signal.SIGKILL)
    replica.popen.wait()
    assert not control_plane.alive()
    with pytest.raises(ControlPlaneError, match="kube-scheduler-2 died"):
        control_plane.check_alive()
    assert control_plane.supervise() == ["kube-scheduler-2"]
    relaunched = control_plane.processes[-1]
    assert relaunched.name == "kube-scheduler-2" and relaunched.argv == replica.argv
    assert relaunched.pid != replica.pid and control_plane.alive()

    manager = next(p for p in control_plane.processes if p.name == "kube-controller-manager")
    manager.popen.send_signal(signal.SIGKILL)
    manager.popen.wait()
    assert control_plane.supervise() == ["kube-controller-manager"]
    control_plane.check_alive()
    assert control_plane.restarts == {"kube-scheduler-2": 1, "kube-controller-manager": 1}
    assert control_plane.supervise() == []
