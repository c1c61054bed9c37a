"""Pod and AdmissionReview builders shared by the webhook unit tests (plain JSON dicts)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from sim.kubelocal.patch import json_patch

GPU = "nvidia.com/gpu"
MEM = "nvidia.com/gpumem"
PCT = "nvidia.com/gpumem-percentage"
CORES = "nvidia.com/gpucores"
PRIORITY = "nvidia.com/priority"

_NAMES = {"gpu": GPU, "mem": MEM, "pct": PCT, "cores": CORES, "priority": PRIORITY}


def res(**values: Any) -> dict[str, Any]:
    """`res(gpu="1", mem="1000")` -> {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}."""
    return {_NAMES.get(k, k): v for k, v in values.items()}


def ctr(
    name: str = "main",
    *,
    limits: dict[str, Any] | None = None,
    requests: dict[str, Any] | None = None,
    env: list[dict[str, Any]] | None = None,
    privileged: bool | None = None,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "busybox:1.36"}
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = limits
    if requests is not None:
        resources["requests"] = requests
    if resources:
        container["resources"] = resources
    if env is not None:
        container["env"] = env
    if privileged is not None:
        container["securityContext"] = {"privileged": privileged}
    if restart_policy is not None:
        container["restartPolicy"] = restart_policy
    return container


def gpu_ctr(name: str = "main", **limits: Any) -> dict[str, Any]:
    return ctr(name, limits=res(**limits))


def pod(
    *containers: dict[str, Any],
    init: tuple[dict[str, Any], ...] = (),
    scheduler: str | None = "default-scheduler",
    node: str | None = None,
    runtime: str | None = None,
    labels: dict[str, str] | None = None,
    name: str = "p",
    namespace: str = "default",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    if node is not None:
        spec["nodeName"] = node
    if runtime is not None:
        spec["runtimeClassName"] = runtime
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(obj: Any, *, api_version: str = "admission.k8s.io/v1", uid: str = "uid-1", **request: Any) -> dict:
    body = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": "CREATE",
        "object": obj,
    }
    body.update(request)
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": body}


def patched(original: Any, ops: Any) -> Any:
    """The original with the patch applied by kube-local's independent RFC 6902 implementation."""
    return json_patch(copy.deepcopy(original), json.loads(json.dumps(list(ops))))


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(ops, list)
    return ops


def container_of(obj: dict[str, Any], index: int = 0, key: str = "containers") -> dict[str, Any]:
    return obj["spec"][key][index]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}
