"""The demo of `make run`: submit pods through the API and report where each one ended up and why."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from services.common import wire
from services.common.codecs import WireFormatError, decode_pod_single_device
from services.common.config import ConfigError
from services.common.inventory import format_table
from services.common.kube import raw_json

ALLOCATIONS_ANNOTATION = "kube-vgpu.local/allocations"
DEMO_COLUMNS = ["pod", "result", "node", "devices", "detail"]


class DemoError(RuntimeError):
    pass


def load_demo_pods(path: str | Path) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read demo pods {path}: {exc}") from exc
    pods = []
    for index, doc in enumerate(docs):
        if (
            not isinstance(doc, dict)
            or doc.get("kind") != "Pod"
            or not (doc.get("metadata") or {}).get("name")
        ):
            raise ConfigError(f"demo pods {path}: document {index} is not a Pod with metadata.name")
        pods.append(_quantities_as_strings(doc))
    return pods


def _quantities_as_strings(pod: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `nvidia.com/gpu: 1` as a number; on the wire a quantity is a string (as kubectl sends)."""
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            resources = container.get("resources") or {}
            for kind in ("limits", "requests"):
                values = resources.get(kind)
                if isinstance(values, dict):
                    resources[kind] = {k: str(v) for k, v in values.items()}
    return pod


def _devices(annotations: Mapping[str, str]) -> str:
    try:
        slots = decode_pod_single_device(annotations.get(wire.VGPU_DEVICES_ALLOCATED, ""))
    except WireFormatError:
        return "?"
    cards = [f"{d.uuid[:12]}… {d.usedmem}MiB/{d.usedcores}%" for slot in slots for d in slot]
    return ", ".join(cards) or "-"


def _limits(raw: str | None) -> str:
    """What each container was handed by Allocate, as recorded by the kubelet stand-in."""
    if not raw:
        return ""
    try:
        recorded = json.loads(raw)
    except json.JSONDecodeError:
        return ""
    containers = recorded.get("containers") if isinstance(recorded, dict) else None
    parts = []
    for entry in containers if isinstance(containers, list) else []:
        env = entry.get("envs") or {}
        limits = [f"{k.removeprefix('CUDA_DEVICE_')}={v}" for k, v in sorted(env.items()) if "LIMIT" in k]
        parts.append(f"{entry.get('name', '?')}: {' '.join(limits) or 'no limits'}")
    return "; ".join(parts)


def _last_failure(core: client.CoreV1Api, namespace: str, name: str) -> str:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    failed = [e for e in events.items if e.reason in ("FailedScheduling", "FailedAllocation")]
    return str(failed[-1].message or "") if failed else ""


def _done(pod: Mapping[str, Any], expect_running: bool) -> bool:
    phase = (pod.get("status") or {}).get("phase", "")
    if phase in ("Running", "Succeeded", "Failed"):
        return True
    return not expect_running and bool((pod.get("spec") or {}).get("nodeName"))


def run_demo(
    api: client.ApiClient,
    pods: list[dict[str, Any]],
    *,
    timeout: float,
    expect_running: bool,
    allocation_record: Callable[[str, str, str], str | None] | None = None,
) -> tuple[str, set[str]]:
    """Creates the pods, waits for each to settle, and returns the report table and the Running pods.
    `allocation_record(node, namespace, name)` reads the kubelet stand-in's record where the pod carries
    no allocations annotation (a real API server does not let a node annotate pods)."""
    core = client.CoreV1Api(api)
    rows: dict[str, dict[str, str]] = {}
    waiting: list[tuple[str, str]] = []
    for pod in pods:
        body: Any = pod  # plain JSON: the client sends dicts as they are
        meta = pod["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        try:
            core.create_namespaced_pod(namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                core.delete_namespaced_pod(name, namespace)
                core.create_namespaced_pod(namespace, body)
            else:
                message = json.loads(exc.body).get("message", exc.reason) if exc.body else exc.reason
                rows[name] = {"pod": name, "result": "Rejected", "detail": str(message)}
                continue
        waiting.append((namespace, name))

    deadline = time.monotonic() + timeout
    current: dict[str, dict[str, Any]] = {}
    while waiting and time.monotonic() < deadline:
        for namespace, name in list(waiting):
            current[name] = raw_json(core.read_namespaced_pod, name, namespace)
            unschedulable = not (current[name].get("spec") or {}).get("nodeName") and bool(
                _last_failure(core, namespace, name)
            )
            if unschedulable or _done(current[name], expect_running):
                waiting.remove((namespace, name))
        if waiting:
            time.sleep(0.2)

    for namespace, name in [(p["metadata"].get("namespace", "default"), p["metadata"]["name"]) for p in pods]:
        if name in rows:
            continue
        pod = current.get(name, {})
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        phase = (pod.get("status") or {}).get("phase", "Pending")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        result = phase if phase != "Pending" or not node else "Bound"
        if node:
            record = annotations.get(ALLOCATIONS_ANNOTATION)
            if not record and allocation_record is not None:
                record = allocation_record(node, namespace, name)
            detail = _limits(record)
        else:
            detail = _last_failure(core, namespace, name)
        rows[name] = {
            "pod": name,
            "result": result,
            "node": node or "-",
            "devices": _devices(annotations) if node else "-",
            "detail": detail,
        }
    ordered = [rows[p["metadata"]["name"]] for p in pods]
    running = {r["pod"] for r in ordered if r["result"] == "Running"}
    return format_table(ordered, DEMO_COLUMNS), running


def _limit_series(metrics_url: str) -> set[tuple[str, str, str]]:
    """(pod, container, device_uuid) of every `hami_vgpu_memory_limit_bytes` series a monitor serves."""
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.labels.get("pod", ""), s.labels.get("container", ""), s.labels.get("device_uuid", ""))
        for family in text_string_to_metric_families(text)
        if family.name == "hami_vgpu_memory_limit_bytes"
        for s in family.samples
    }


def monitor_summary(monitors: Mapping[str, tuple[str, str]], running_pods: set[str], timeout: float) -> str:
    """What each node's monitor shows for the demo pods: the limit series appear once a container has its
    allocation, before any CUDA call (HAMi#1814). Waits for every running pod to show up, up to `timeout`."""
    deadline = time.monotonic() + timeout
    seen: dict[str, set[tuple[str, str, str]]] = {}
    while True:
        for node, (metrics_url, _) in monitors.items():
            try:
                seen[node] = _limit_series(metrics_url)
            except OSError:
                seen[node] = set()
        pods_seen = {pod for series in seen.values() for pod, _, _ in series}
        if running_pods <= pods_seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = ["monitor: hami_vgpu_memory_limit_bytes series per node"]
    for node in sorted(seen):
        containers = sorted({f"{pod}/{container}" for pod, container, _ in seen[node]})
        lines.append(f"  {node}: {len(seen[node])} series ({', '.join(containers) or 'none'})")
    return "\n".join(lines)
