"""Every overlay and component combination is fit for a real cluster: each container has resource requests
and limits, the namespace's Pod Security labels admit the one privileged pod (the device plugin DaemonSet),
and every other pod meets the `restricted` Pod Security Standard (seccomp RuntimeDefault, no privilege
escalation, non-root, capabilities dropped, no host namespaces or host paths)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import (
    BASE,
    COMBINATIONS,
    NAMESPACE,
    OUR_IMAGES,
    OVERLAY_NAMES,
    OVERLAYS,
    ROOT_IMAGES,
    Obj,
    Render,
    by_kind,
    combo_dir,
    containers,
    find,
    image_name,
    pod_spec,
    workloads,
)

from services.common.resources import parse_quantity

PRIVILEGED_WORKLOAD = ("DaemonSet", "kube-vgpu-device-plugin")
PRIVILEGED_CONTAINER = "kube-vgpu-device-plugin"
#: Volume types the `restricted` profile allows (hostPath is the one our pods would otherwise use).
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
PSA_LEVELS = ("privileged", "baseline", "restricted")

TARGETS = [f"overlay:{name}" for name in OVERLAY_NAMES] + ["+".join(c) for c in COMBINATIONS]


def render_target(render: Render, scratch: Path, target: str) -> list[Obj]:
    if target.startswith("overlay:"):
        return render(OVERLAYS / target.removeprefix("overlay:"))
    return render(combo_dir(scratch, tuple(target.split("+"))))


@pytest.fixture(scope="module", autouse=True)
def _render_all_at_once(render: Render, scratch: Path) -> None:
    prefetch = getattr(render, "prefetch", None)
    if prefetch is not None:
        prefetch([*(OVERLAYS / n for n in OVERLAY_NAMES), *(combo_dir(scratch, c) for c in COMBINATIONS)])


def where(workload: Obj, ctr: Obj | None = None) -> str:
    name = f"{workload['kind']}/{workload['metadata']['name']}"
    return f"{name}/{ctr['name']}" if ctr is not None else name


def is_privileged_container(workload: Obj, ctr: Obj) -> bool:
    return (workload["kind"], workload["metadata"]["name"]) == PRIVILEGED_WORKLOAD and ctr[
        "name"
    ] == PRIVILEGED_CONTAINER


def effective(workload: Obj, ctr: Obj, key: str) -> object:
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    own = (ctr.get("securityContext") or {}).get(key)
    return own if own is not None else (pod_spec(workload).get("securityContext") or {}).get(key)


# --- resources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_limits(render: Render, scratch: Path, target: str) -> None:
    """CPU and memory requests (the scheduler places by them) and a memory limit (a leak is OOM-killed
    instead of starving the node). CPU is deliberately not limited: a throttled extender stalls
    kube-scheduler's serial cycle and the webhook's admission deadline
    (overlays/production/resources.yaml)."""
    found = 0
    for workload in workloads(render_target(render, scratch, target)):
        for ctr in containers(workload):
            found += 1
            resources = ctr.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            assert {"cpu", "memory"} <= set(requests), f"{where(workload, ctr)}: requests {requests}"
            assert "memory" in limits, f"{where(workload, ctr)}: no memory limit"
            assert parse_quantity(str(requests["cpu"])) > 0, where(workload, ctr)
            assert parse_quantity(str(limits["memory"])) >= parse_quantity(str(requests["memory"])) > 0, (
                f"{where(workload, ctr)}: memory limit below the request"
            )
            if "cpu" in limits:
                assert parse_quantity(str(limits["cpu"])) >= parse_quantity(str(requests["cpu"]))
    assert found >= 4


def test_dev_overlay_and_certgen_job_have_resources(render: Render) -> None:
    """The two that had none: the dev overlay (base's own sizes) and the self-signed-certs Job."""
    objects = render(OVERLAYS / "dev")
    job = find(objects, "Job", "kube-vgpu-certgen")
    assert len(containers(job)) == 3
    for ctr in containers(job):
        assert ctr["resources"]["requests"] and ctr["resources"]["limits"], ctr["name"]
    base = render(BASE)
    for workload in workloads(base):
        for ctr in containers(workload):
            assert ctr.get("resources"), (
                f"base {where(workload, ctr)}: sizes belong in base, overlays raise them"
            )


# --- Pod Security ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_pod_security_admits_only_the_device_plugin(
    render: Render, scratch: Path, target: str
) -> None:
    objects = render_target(render, scratch, target)
    labels = find(objects, "Namespace", NAMESPACE)["metadata"].get("labels") or {}
    prefix = "pod-security.kubernetes.io/"
    # The DaemonSet is privileged, so nothing stricter can be enforced...
    assert labels.get(prefix + "enforce") == "privileged", labels
    # ...but warn and audit name every pod that would not be admitted under `restricted`.
    for mode in ("audit", "warn"):
        level = labels.get(prefix + mode)
        assert level in PSA_LEVELS and PSA_LEVELS.index(level) > 0, f"{mode}: {level}"
    needing_privilege = sorted(
        where(w, c) for w in workloads(objects) for c in containers(w) if container_violations(w, c)
    )
    assert needing_privilege == ["/".join((*PRIVILEGED_WORKLOAD, PRIVILEGED_CONTAINER))], needing_privilege
    for workload in workloads(objects):
        if (workload["kind"], workload["metadata"]["name"]) == PRIVILEGED_WORKLOAD:
            continue
        assert not pod_violations(workload), f"{where(workload)}: {pod_violations(workload)}"


@pytest.mark.parametrize("target", TARGETS)
def test_unprivileged_containers_are_hardened(render: Render, scratch: Path, target: str) -> None:
    """seccomp RuntimeDefault, no privilege escalation and a read-only root filesystem wherever privilege is
    not needed; non-root wherever the image runs non-root (deploy/docker: all but the device plugin)."""
    for workload in workloads(render_target(render, scratch, target)):
        for ctr in containers(workload):
            context = ctr.get("securityContext") or {}
            label = where(workload, ctr)
            # Every process here writes only to its volumes (emptyDir /tmp, hostPath for the plugin).
            assert context.get("readOnlyRootFilesystem") is True, f"{label}: writable root filesystem"
            if is_privileged_container(workload, ctr):
                assert context.get("privileged") is True
                continue
            assert not context.get("privileged"), label
            assert effective(workload, ctr, "seccompProfile") == {"type": "RuntimeDefault"}, label
            assert context.get("allowPrivilegeEscalation") is False, label
            assert "ALL" in (context.get("capabilities") or {}).get("drop", []), label
            if image_name(ctr["image"]) in OUR_IMAGES:
                runs_as_root = image_name(ctr["image"]).split("/")[1] in ROOT_IMAGES
                assert not runs_as_root, f"{label}: runs the root image {ctr['image']} unprivileged"
            assert effective(workload, ctr, "runAsNonRoot") is True, label
            assert effective(workload, ctr, "runAsUser") not in (None, 0), f"{label}: name a non-root uid"


def test_the_privileged_container_runs_the_root_image(render: Render) -> None:
    for name in OVERLAY_NAMES:
        objects = render(OVERLAYS / name)
        daemonset = find(objects, *PRIVILEGED_WORKLOAD)
        (plugin,) = [c for c in containers(daemonset) if c["name"] == PRIVILEGED_CONTAINER]
        assert image_name(plugin["image"]).split("/")[1] in ROOT_IMAGES
        # privileged implies escalation; the API server refuses allowPrivilegeEscalation=false with it.
        assert "allowPrivilegeEscalation" not in plugin["securityContext"]
        assert len(by_kind(objects, "DaemonSet")) == 1


def container_violations(workload: Obj, ctr: Obj) -> list[str]:
    """What the `restricted` profile refuses in one container (its pod-level fields included)."""
    context = ctr.get("securityContext") or {}
    problems = []
    if context.get("privileged"):
        problems.append("privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("capabilities not dropped")
    if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
        problems.append(f"capabilities added: {capabilities['add']}")
    if effective(workload, ctr, "runAsNonRoot") is not True or effective(workload, ctr, "runAsUser") == 0:
        problems.append("may run as root")
    seccomp = effective(workload, ctr, "seccompProfile") or {}
    if not isinstance(seccomp, dict) or seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"seccompProfile {seccomp}")
    if any(port.get("hostPort") for port in ctr.get("ports") or []):
        problems.append("hostPort")
    if context.get("procMount", "Default") != "Default":
        problems.append("procMount")
    return problems


def pod_violations(workload: Obj) -> list[str]:
    """What the `restricted` profile refuses at pod level: host namespaces and non-ephemeral host volumes."""
    spec = pod_spec(workload)
    problems = [f"{key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {vol['name']}: {sorted(kinds)}")
    if (spec.get("securityContext") or {}).get("sysctls"):
        problems.append("sysctls")
    return problems


def test_the_restricted_check_sees_privilege() -> None:
    """The checker itself: a privileged, hostPath, root pod is refused on every count."""
    pod: Obj = {
        "kind": "Pod",
        "metadata": {"name": "bad"},
        "spec": {
            "hostNetwork": True,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [
                {
                    "name": "c",
                    "ports": [{"containerPort": 1, "hostPort": 1}],
                    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                }
            ],
        },
    }
    (ctr,) = containers(pod)
    assert len(container_violations(pod, ctr)) == 7
    assert pod_violations(pod) == ["hostNetwork", "volume h: ['hostPath']"]
