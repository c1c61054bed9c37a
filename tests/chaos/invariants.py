"""The chaos suite's invariants, as pure checks over plain Kubernetes JSON (nodes, pods): each returns the
violations it finds as readable lines, so a failing run says which card, lock or pod broke which rule."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common import wire
from services.common.codecs import (
    WireFormatError,
    decode_node_devices,
    decode_pod_single_device,
    parse_node_lock,
)

Obj = Mapping[str, Any]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _annotations(obj: Obj) -> Mapping[str, str]:
    return _meta(obj).get("annotations") or {}


def pod_key(pod: Obj) -> str:
    return f"{_meta(pod).get('namespace')}/{_meta(pod).get('name')}"


@dataclass
class CardUse:
    """What the pods assigned to one card ask of it, against what the node registered for it."""

    memory_mib: int = 0
    cores: int = 0
    shares: int = 0


def overcommitted_cards(nodes: Iterable[Obj], pods: Iterable[Obj]) -> list[str]:
    """Cards whose assigned memory, cores or shares (slots) exceed what the node's register annotation
    offers. A pod counts once the scheduler has written its assignment (`hami.io/vgpu-devices-allocated`
    on the node of `hami.io/vgpu-node`), bound or not, until it is finished or gone: the scheduler counts
    it for exactly that span, so any excess is a double booking."""
    registered: dict[str, dict[str, tuple[int, int, int]]] = {}
    violations: list[str] = []
    for node in nodes:
        name = str(_meta(node).get("name"))
        value = _annotations(node).get(wire.NODE_NVIDIA_REGISTER)
        if not value:
            continue
        try:
            devices = decode_node_devices(value)
        except WireFormatError as exc:
            violations.append(f"node {name}: register annotation unreadable: {exc}")
            continue
        registered[name] = {d.id: (d.devmem, d.devcore, d.count) for d in devices}
    use: dict[tuple[str, str], CardUse] = defaultdict(CardUse)
    for pod in pods:
        annotations = _annotations(pod)
        assigned = annotations.get(wire.VGPU_DEVICES_ALLOCATED)
        pod_node = annotations.get(wire.VGPU_NODE) or (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if not assigned or not pod_node or phase in TERMINAL_PHASES:
            continue
        try:
            slots = decode_pod_single_device(assigned)
        except WireFormatError as exc:
            violations.append(f"pod {pod_key(pod)}: assignment unreadable: {exc}")
            continue
        for device in (d for slot in slots for d in slot):
            card = use[(str(pod_node), device.uuid)]
            card.memory_mib += device.usedmem
            card.cores += device.usedcores
            card.shares += 1
    for (card_node, uuid), card in sorted(use.items(), key=lambda item: item[0]):
        offered = registered.get(card_node, {}).get(uuid)
        if offered is None:
            violations.append(f"{card_node} card {uuid}: assigned to pods but not registered on the node")
            continue
        memory, cores, shares = offered
        for what, used, limit in (
            ("memory MiB", card.memory_mib, memory),
            ("cores %", card.cores, cores),
            ("shares", card.shares, shares),
        ):
            if used > limit:
                violations.append(f"{card_node} card {uuid}: {what} over-committed, {used} > {limit}")
    return violations


def locks_held_too_long(nodes: Iterable[Obj], now: datetime, ttl_seconds: float) -> list[str]:
    """Node locks (`hami.io/mutex.lock`) older than `ttl_seconds`: the device plugin releases a lock in
    Allocate and the scheduler's leader clears one past its TTL, so one that stays is a lock nobody
    releases."""
    violations = []
    for node in nodes:
        value = _annotations(node).get(wire.NODE_LOCK)
        if not value:
            continue
        name = _meta(node).get("name")
        try:
            lock = parse_node_lock(value)
        except WireFormatError as exc:
            violations.append(f"node {name}: lock {value!r} unreadable: {exc}")
            continue
        if (now - lock.acquired_at).total_seconds() > ttl_seconds:
            # No age in the text: the observer records each stale lock once, however long it stays.
            violations.append(f"node {name}: lock {value!r} still held past {ttl_seconds:g}s")
    return violations


def unschedulable_reason(pod: Obj) -> str | None:
    """The reason of a `PodScheduled=False` condition (the kube-scheduler's FailedScheduling), if any."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("reason") or "")
    return None


# The FailedScheduling reason of a pod that does not fit anywhere. `SchedulerError` (an extender that did not
# answer) is a transient state the scheduler retries, not an end state.
UNSCHEDULABLE = "Unschedulable"


def unsettled_pods(pods: Iterable[Obj], *, explanation_may_be_lost: bool = False) -> list[str]:
    """Pods that are neither Running nor Pending with a FailedScheduling reason (unbound, PodScheduled=False
    with reason Unschedulable): a bound pod still Pending, a Failed pod, or an unbound pod whose last attempt
    failed for another reason or that nobody explained. With `explanation_may_be_lost` (across an API server
    outage) an unbound pod with no PodScheduled condition at all also passes."""
    violations = []
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase == "Running":
            continue
        bound = bool((pod.get("spec") or {}).get("nodeName"))
        reason = unschedulable_reason(pod)
        if phase == "Pending" and not bound and reason == UNSCHEDULABLE:
            continue
        if explanation_may_be_lost and phase == "Pending" and not bound and reason is None:
            # The kube-scheduler's PodScheduled=False write failed while the API server was down, and it
            # schedules an unschedulable pod again only on a cluster event or after minutes: the pod is
            # there (what the API server fault checks), its explanation was not written.
            continue
        detail = (pod.get("status") or {}).get("message") or ""
        where = f"bound to {pod['spec']['nodeName']}" if bound else f"not bound, last reason {reason}"
        violations.append(f"pod {pod_key(pod)}: {phase}, {where} {detail}".rstrip())
    return violations


def settled(pods: Iterable[Obj]) -> bool:
    return not unsettled_pods(pods)
