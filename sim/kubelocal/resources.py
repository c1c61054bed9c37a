"""The resource types kube-local serves and their per-type rules (defaults, selectable fields).

Adding a type is one :class:`ResourceType` entry in :data:`RESOURCES`; the router, discovery
documents, store and persistence all go by this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sim.kubelocal.webhook_config import apply_webhook_defaults

Obj = dict[str, Any]

_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

OBJECT_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")
COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    #: subresources other than status, with the kind their body has and the verbs they take.
    extra_subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    #: fields usable in fieldSelector besides metadata.name / metadata.namespace.
    selectable_fields: frozenset[str] = field(default_factory=frozenset)
    #: metadata.generation starts at 1 and bumps whenever spec changes.
    tracks_generation: bool = False
    #: DELETE answers with the deleted object rather than a Status.
    return_deleted_object: bool = False
    #: names must be DNS-1123 labels (namespaces) rather than subdomains.
    label_names: bool = False

    @property
    def key(self) -> str:
        return f"{self.group}/{self.plural}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def subresources(self) -> frozenset[str]:
        names = {name for name, _, _ in self.extra_subresources}
        if self.status_subresource:
            names.add("status")
        return frozenset(names)

    @property
    def field_selectors(self) -> frozenset[str]:
        return COMMON_FIELDS | self.selectable_fields


NAMESPACES = ResourceType(
    "",
    "v1",
    "namespaces",
    "namespace",
    "Namespace",
    namespaced=False,
    short_names=("ns",),
    status_subresource=True,
    selectable_fields=frozenset({"status.phase"}),
    return_deleted_object=True,
    label_names=True,
)
NODES = ResourceType(
    "",
    "v1",
    "nodes",
    "node",
    "Node",
    namespaced=False,
    short_names=("no",),
    status_subresource=True,
    selectable_fields=frozenset({"spec.unschedulable"}),
)
PODS = ResourceType(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    namespaced=True,
    short_names=("po",),
    status_subresource=True,
    extra_subresources=(
        ("binding", "Binding", ("create",)),
        ("eviction", "Eviction", ("create",)),
        ("ephemeralcontainers", "Pod", ("get", "patch", "update")),
    ),
    selectable_fields=frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    tracks_generation=True,
    return_deleted_object=True,
)
EVENTS = ResourceType(
    "",
    "v1",
    "events",
    "event",
    "Event",
    namespaced=True,
    short_names=("ev",),
    selectable_fields=frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
)
RESOURCE_QUOTAS = ResourceType(
    "",
    "v1",
    "resourcequotas",
    "resourcequota",
    "ResourceQuota",
    namespaced=True,
    short_names=("quota",),
    status_subresource=True,
    return_deleted_object=True,
)
LEASES = ResourceType(
    "coordination.k8s.io",
    "v1",
    "leases",
    "lease",
    "Lease",
    namespaced=True,
)

MUTATING_WEBHOOK_CONFIGURATIONS = ResourceType(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "mutatingwebhookconfiguration",
    "MutatingWebhookConfiguration",
    namespaced=False,
)

ALL_RESOURCES: tuple[ResourceType, ...] = (
    NAMESPACES,
    NODES,
    PODS,
    EVENTS,
    RESOURCE_QUOTAS,
    LEASES,
    MUTATING_WEBHOOK_CONFIGURATIONS,
)

#: (group, version) -> {plural: type}
RESOURCES: dict[tuple[str, str], dict[str, ResourceType]] = {}
for _rt in ALL_RESOURCES:
    RESOURCES.setdefault((_rt.group, _rt.version), {})[_rt.plural] = _rt
BY_KEY: dict[str, ResourceType] = {rt.key: rt for rt in ALL_RESOURCES}

#: Namespaces that exist from the start and cannot be deleted (the four kube-apiserver creates).
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

# Fields whose absent value renders as "false" (booleans) in field selectors.
_BOOLEAN_FIELDS = frozenset({"spec.unschedulable", "spec.hostNetwork"})
_FIELD_ALIASES = {"source": "source.component"}


def field_value(obj: Obj, path: str) -> str:
    """The value of ``path`` in ``obj`` as the apiserver compares it in a field selector."""
    node: Any = obj
    for part in _FIELD_ALIASES.get(path, path).split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return "false" if path in _BOOLEAN_FIELDS else ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def validate_name(rt: ResourceType, name: str) -> str | None:
    """The apiserver's complaint about ``name`` for ``rt``, or None when it is fine."""
    if rt.label_names:
        if len(name) > 63 or not _DNS1123_LABEL_RE.match(name):
            return (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                "and must start and end with an alphanumeric character (at most 63 characters)"
            )
        return None
    if len(name) > 253 or not _DNS1123_SUBDOMAIN_RE.match(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (at most 253 characters)"
        )
    return None


def _image_pull_policy(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    tag = last.rsplit(":", 1)[1] if ":" in last else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _default_containers(containers: Any) -> None:
    if not isinstance(containers, list):
        return
    for container in containers:
        if not isinstance(container, dict):
            continue
        image = container.get("image")
        if isinstance(image, str) and "imagePullPolicy" not in container:
            container["imagePullPolicy"] = _image_pull_policy(image)
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")


def apply_defaults(rt: ResourceType, obj: Obj) -> None:
    """Server-side defaulting, done before admission like the apiserver's decoder does.

    Only the pod defaults our components look at (scheduler name, restart/DNS policy, grace
    period, container pull policy) are applied; the apiserver applies many more. Mutating webhook
    configurations get the admissionregistration/v1 defaults (see ``webhook_config.py``).
    """
    if rt is MUTATING_WEBHOOK_CONFIGURATIONS:
        apply_webhook_defaults(obj)
        return
    if rt is not PODS:
        return
    spec = obj.get("spec")
    if isinstance(spec, dict):
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("securityContext", {})
        _default_containers(spec.get("containers"))
        _default_containers(spec.get("initContainers"))


def default_status_on_create(rt: ResourceType, obj: Obj) -> None:
    """Status the apiserver fills in on create (kube-local keeps any status a client sends)."""
    if rt is PODS:
        status = obj.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("phase", "Pending")
    elif rt is NAMESPACES:
        status = obj.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("phase", "Active")
        labels = obj["metadata"].setdefault("labels", {})
        if isinstance(labels, dict):
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
