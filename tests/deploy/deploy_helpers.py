"""Paths and helpers of the deploy/ checks (render with `kubectl kustomize`, find objects, containers)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
BASE = KUSTOMIZE / "base"
COMPONENTS = KUSTOMIZE / "components"
OVERLAYS = KUSTOMIZE / "overlays"

Obj = dict[str, Any]
Render = Callable[[Path], list[Obj]]


def kubectl() -> str | None:
    return shutil.which("kubectl")


def needs_kubectl() -> None:
    if kubectl() is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH; install kubectl >= 1.27 to render")


def run_kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize DIR` as a list of objects; fails the test with kustomize's message on error."""
    binary = kubectl()
    assert binary is not None
    proc = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{proc.stderr.strip()}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(proc.stdout, Loader=loader) if doc]


def write_kustomization(
    directory: Path,
    *,
    resources: list[Path],
    components: list[Path] | None = None,
    extra: Obj | None = None,
) -> Path:
    """A kustomization in `directory` listing `resources` and `components` by relative path (kustomize
    refuses absolute ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    body: Obj = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(p, directory) for p in resources],
    }
    if components:
        body["components"] = [os.path.relpath(p, directory) for p in components]
    body.update(extra or {})
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return directory


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


# --- what the tests render --------------------------------------------------------------------------------

#: Exactly one of these provides the serving certificates (ca.crt, tls.crt, tls.key Secrets).
CERT_COMPONENTS = ("certmanager", "self-signed-certs")
#: Combinable with either certificate component and with each other.
OPTIONAL_COMPONENTS = ("servicemonitor", "gpu-operator", "ha-scheduler")
OVERLAY_NAMES = ("dev", "production")
NAMESPACE = "kube-vgpu"
#: API groups of custom resources (no schema in kubernetes-validate; checked structurally instead).
CRD_GROUPS = frozenset({"cert-manager.io", "monitoring.coreos.com"})
#: Our images (by symbolic name, as in base) and the console script each runs.
OUR_IMAGES = {
    "kube-vgpu/scheduler": "kube-vgpu-scheduler",
    "kube-vgpu/webhook": "kube-vgpu-webhook",
    "kube-vgpu/device-plugin": "kube-vgpu-device-plugin",
    "kube-vgpu/monitor": "kube-vgpu-monitor",
}
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "Job", "StatefulSet", "Pod")
#: Images whose Dockerfile runs as root: the device plugin writes the kubelet's socket dir and host paths and
#: needs privileged NVML access. Every other image runs as a numeric non-root user.
ROOT_IMAGES = frozenset({"device-plugin"})
#: Every certificate component with every subset of the optional ones.
COMBINATIONS = [
    (cert, *optional)
    for cert in CERT_COMPONENTS
    for size in range(len(OPTIONAL_COMPONENTS) + 1)
    for optional in itertools.combinations(OPTIONAL_COMPONENTS, size)
]


def combo_dir(scratch: Path, combo: tuple[str, ...], namespace_layer: Path | None = None) -> Path:
    """A kustomization of base (or `namespace_layer`) with the components of `combo`."""
    return write_kustomization(
        scratch / ("combo-" + "+".join(combo) + ("-ns" if namespace_layer else "")),
        resources=[namespace_layer or BASE],
        components=[COMPONENTS / name for name in combo],
    )


def group_of(obj: Obj) -> str:
    api_version = str(obj.get("apiVersion", ""))
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec


def containers(obj: Obj, *, init: bool = True) -> list[Obj]:
    spec = pod_spec(obj)
    found: list[Obj] = list(spec.get("containers") or [])
    if init:
        found += list(spec.get("initContainers") or [])
    return found


def container(obj: Obj, name: str) -> Obj:
    for candidate in containers(obj):
        if candidate["name"] == name:
            return candidate
    raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} has no container {name}")


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o.get("kind") in WORKLOAD_KINDS]


def image_name(image: str) -> str:
    """`repo/name:tag` -> `repo/name` (a registry host with a port keeps its colon)."""
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0].split("@", 1)[0]


def container_port(ctr: Obj, name: str) -> int:
    for port in ctr.get("ports") or []:
        if port.get("name") == name:
            return int(port["containerPort"])
    raise AssertionError(f"container {ctr['name']} has no port named {name}")


def volume(obj: Obj, name: str) -> Obj:
    for vol in pod_spec(obj).get("volumes") or []:
        if vol["name"] == name:
            return dict(vol)
    raise AssertionError(f"{obj['metadata']['name']} has no volume {name}")


def mount_for(obj: Obj, ctr: Obj, path: str) -> tuple[Obj, Obj, str]:
    """(volumeMount, volume, path inside the volume) of the deepest mount holding `path`."""
    best: Obj | None = None
    for mount in ctr.get("volumeMounts") or []:
        mount_path = mount["mountPath"].rstrip("/") or "/"
        if (path == mount_path or path.startswith(mount_path + "/")) and (
            best is None or len(mount_path) > len(best["mountPath"])
        ):
            best = mount
    if best is None:
        raise AssertionError(f"{path} is in no volumeMount of container {ctr['name']}")
    rest = path[len(best["mountPath"].rstrip("/")) :].lstrip("/")
    return best, volume(obj, best["name"]), rest


def volume_sources(vol: Obj) -> list[tuple[str, str, list[Obj] | None]]:
    """(kind, name, items) of a configMap / secret / projected volume."""
    if "configMap" in vol:
        return [("ConfigMap", vol["configMap"]["name"], vol["configMap"].get("items"))]
    if "secret" in vol:
        return [("Secret", vol["secret"]["secretName"], vol["secret"].get("items"))]
    sources: list[tuple[str, str, list[Obj] | None]] = []
    for source in (vol.get("projected") or {}).get("sources") or []:
        if "configMap" in source:
            sources.append(("ConfigMap", source["configMap"]["name"], source["configMap"].get("items")))
        if "secret" in source:
            sources.append(("Secret", source["secret"]["name"], source["secret"].get("items")))
    return sources


def file_source(obj: Obj, ctr: Obj, path: str) -> tuple[str, str, str]:
    """(kind, object name, key) that provides file `path` of a container (ConfigMap or Secret volume)."""
    _mount, vol, rest = mount_for(obj, ctr, path)
    for kind, name, items in volume_sources(vol):
        if items is None:
            if "/" not in rest:
                return kind, name, rest
            continue
        for item in items:
            if item["path"] == rest:
                return kind, name, item["key"]
    raise AssertionError(f"{path} of container {ctr['name']} comes from no ConfigMap or Secret key")


def configmap_file(objects: list[Obj], obj: Obj, ctr: Obj, path: str) -> str:
    kind, name, key = file_source(obj, ctr, path)
    assert kind == "ConfigMap", f"{path} should come from a ConfigMap, comes from {kind} {name}"
    data = find(objects, "ConfigMap", name).get("data") or {}
    assert key in data, f"ConfigMap {name} has no key {key} (mounted at {path})"
    return str(data[key])


def host_path_of(obj: Obj, ctr: Obj, path: str) -> str:
    """The host path that container path `path` is (through a hostPath volume)."""
    _mount, vol, rest = mount_for(obj, ctr, path)
    assert "hostPath" in vol, f"{path} of container {ctr['name']} is not on a hostPath volume"
    host = str(vol["hostPath"]["path"]).rstrip("/")
    return f"{host}/{rest}" if rest else host


def env_value(obj: Obj, ctr: Obj, name: str, placeholders: dict[str, str] | None = None) -> str | None:
    """The value of env `name`: literal, or a downward-API field replaced by `placeholders[fieldPath]`."""
    for entry in ctr.get("env") or []:
        if entry["name"] != name:
            continue
        if "value" in entry:
            return str(entry["value"])
        field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field is not None:
            return (placeholders or {}).get(field, f"<{field}>")
        raise AssertionError(f"env {name} of {ctr['name']} has a source the tests do not model")
    return None


def field_ref(ctr: Obj, name: str) -> str | None:
    for entry in ctr.get("env") or []:
        if entry["name"] == name:
            return ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    return None
