"""What a bind writes onto a pod and reads from it (docs/hami-wire.md#bind), and the pod copies a bind starts
from: pure functions and plain data, no I/O. `services.scheduler.bind` does the API calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from services.common import wire
from services.common.codecs import encode_pod_single_device
from services.scheduler.decoders import PodContext
from services.scheduler.fit import MigAssignment, NodeFit

__all__ = [
    "BIND_ANNOTATION_KEYS",
    "BindError",
    "RecentPods",
    "already_bound",
    "bind_annotations",
    "encode_mig_allocations",
    "revert_patch",
    "str_map",
]


# Every pod annotation the bind writes (and a rollback restores).
BIND_ANNOTATION_KEYS: Final = (
    wire.VGPU_NODE,
    wire.VGPU_TIME,
    wire.VGPU_DEVICES_TO_ALLOCATE,
    wire.VGPU_DEVICES_ALLOCATED,
    wire.VGPU_MIG_ALLOCATIONS,
    wire.BIND_PHASE,
    wire.BIND_TIME,
)


class BindError(RuntimeError):
    """A bind that cannot go on; the message is what kube-scheduler gets in `Error`."""


def encode_mig_allocations(assignments: tuple[MigAssignment, ...]) -> str:
    """`hami.io/vgpu-mig-allocations` (docs/hami-wire.md#mig-allocations) without the runtime fields the
    device plugin adds."""
    return json.dumps(
        [
            {
                "containerIndex": a.container_index,
                "deviceIndex": a.device_index,
                "gpuUUID": a.gpu_uuid,
                "profile": a.profile,
                "placement": {"start": a.placement.start, "size": a.placement.size},
            }
            for a in assignments
        ],
        separators=(",", ":"),
    )


def bind_annotations(node: str, fit: NodeFit, now: datetime) -> dict[str, str]:
    """The pod annotations a successful re-fit writes (HAMi's keys and value formats)."""
    devices = encode_pod_single_device(fit.devices)
    stamp = str(int(now.timestamp()))
    annotations = {
        wire.VGPU_NODE: node,
        wire.VGPU_TIME: stamp,
        wire.VGPU_DEVICES_TO_ALLOCATE: devices,
        wire.VGPU_DEVICES_ALLOCATED: devices,
        wire.BIND_PHASE: wire.BindPhase.ALLOCATING.value,
        wire.BIND_TIME: stamp,
    }
    if fit.mig:
        annotations[wire.VGPU_MIG_ALLOCATIONS] = encode_mig_allocations(fit.mig)
    return annotations


def revert_patch(
    before_annotations: Mapping[str, str], before_labels: Mapping[str, str], written: Mapping[str, str]
) -> dict[str, Any]:
    """The merge patch that restores what a bind patch overwrote (null where a key was absent)."""
    return {
        "metadata": {
            "annotations": {key: before_annotations.get(key) for key in written},
            "labels": {wire.VGPU_NODE: before_labels.get(wire.VGPU_NODE)},
        }
    }


def already_bound(pod: Mapping[str, Any], node: str, *, gpu: bool) -> str | None:
    """None when the pod still needs binding; "" when it is already bound to `node` by an earlier bind (a
    retried request: success, nothing to redo); an error when it is bound elsewhere."""
    spec = pod.get("spec")
    bound = spec.get("nodeName") if isinstance(spec, Mapping) else None
    if not bound:
        return None
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    ours = isinstance(annotations, Mapping) and annotations.get(wire.VGPU_NODE) == node
    if bound == node and (ours or not gpu):
        return ""
    name = f"{metadata.get('namespace')}/{metadata.get('name')}" if isinstance(metadata, Mapping) else "pod"
    return f'pod {name} is already assigned to node "{bound}"'


# The first release where the API server copies a Binding's labels onto the pod by default (the
# PodTopologyLabelsAdmission feature, beta and on from 1.35); annotations are copied in every release.
BINDING_LABELS_SINCE: Final = (1, 35)


def binding_copies_labels(version: Mapping[str, Any]) -> bool:
    """Whether an API server whose `/version` answer is `version` copies a Binding's labels onto the pod by
    default. `minor` may carry a suffix ("35+" on some distributions); anything unreadable is False."""
    major, minor = version.get("major"), version.get("minor")
    if not isinstance(major, str) or not isinstance(minor, str):
        return False
    major_digits, minor_digits = major.rstrip("+"), minor.rstrip("+")
    if not major_digits.isdigit() or not minor_digits.isdigit():
        return False
    return (int(major_digits), int(minor_digits)) >= BINDING_LABELS_SINCE


def str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


class RecentPods:
    """The pods kube-scheduler just filtered, by UID, for the bind that follows within the same scheduling
    cycle: the bind starts from that copy instead of a GET. The copy is only trusted through the
    resourceVersion precondition of the bind's pod patch (a 409 sends the bind back to a fresh read), so a
    stale or forged copy cannot place a pod on outdated facts. Bounded in count and age."""

    def __init__(self, limit: int = 1024, max_age: float = 60.0) -> None:
        self._limit = max(1, limit)
        self._max_age = max_age
        self._pods: dict[str, tuple[Mapping[str, Any], PodContext | None, float]] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def remember(self, pod: Mapping[str, Any], context: PodContext | None = None) -> None:
        """Keep the filtered copy, and its decoded `PodContext` when the caller has it (decoding the
        containers' requests again at bind time would cost as much as the bind's own logic)."""
        metadata = pod.get("metadata")
        if not isinstance(metadata, Mapping):
            return
        uid, rv = metadata.get("uid"), metadata.get("resourceVersion")
        if not isinstance(uid, str) or not uid or not isinstance(rv, str) or not rv:
            return  # without a resourceVersion the copy could not be checked at patch time
        self._pods.pop(uid, None)
        if len(self._pods) >= self._limit:
            del self._pods[next(iter(self._pods))]  # the oldest entry (dicts keep insertion order)
        self._pods[uid] = (pod, context, time.monotonic())

    def take(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        """The filtered copy of pod `uid` when it is that namespace/name and recent enough; forgotten then."""
        entry = self.take_with_context(namespace, name, uid)
        return entry[0] if entry is not None else None

    def take_with_context(
        self, namespace: str, name: str, uid: str
    ) -> tuple[Mapping[str, Any], PodContext | None] | None:
        """`take`, with the context remembered beside the copy (None when none was)."""
        entry = self._pods.pop(uid, None) if uid else None
        if entry is None:
            return None
        pod, context, seen = entry
        metadata = pod.get("metadata")
        if time.monotonic() - seen > self._max_age or not isinstance(metadata, Mapping):
            return None
        if metadata.get("namespace", "default") != namespace or metadata.get("name") != name:
            return None
        return pod, context
