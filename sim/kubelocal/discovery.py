"""kube-local's discovery documents: ``/version``, ``/api``, ``/apis``, ``/apis/{group}`` and each
group version's ``APIResourceList``, all derived from the resource table in ``resources.py``.

Clients (the official client's discovery, kubectl, informers) read these to learn which resources,
verbs and subresources exist; kube-local serves exactly what ``resources.py`` declares.
"""

from __future__ import annotations

from typing import Final

from sim.kubelocal import errors
from sim.kubelocal.resources import ALL_RESOURCES, OBJECT_VERBS, RESOURCES, STATUS_VERBS, Obj

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.2-kube-local",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def root_paths() -> set[str]:
    paths = {"/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"}
    paths.update({"/openapi/v2", "/openapi/v3"})  # openapi.py
    for group, version in RESOURCES:
        if group:
            paths.update({f"/apis/{group}", f"/apis/{group}/{version}"})
    return paths


def api_versions(host: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def _group_doc(group: str) -> Obj:
    versions = [
        {"groupVersion": f"{group}/{version}", "version": version} for g, version in RESOURCES if g == group
    ]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def group_list() -> Obj:
    groups = sorted({g for g, _ in RESOURCES if g})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_doc(g) for g in groups]}


def group_document(group: str) -> Obj:
    if not group or all(g != group for g, _ in RESOURCES):
        raise errors.path_not_found()
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group)}


def resource_list(group: str, version: str) -> Obj:
    entries: list[Obj] = []
    for rt in ALL_RESOURCES:
        if (rt.group, rt.version) != (group, version):
            continue
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(OBJECT_VERBS),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        entries.append(entry)
        if rt.status_subresource:
            entries.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": list(STATUS_VERBS),
                }
            )
        for sub, kind, verbs in rt.extra_subresources:
            entries.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": kind,
                    "verbs": list(verbs),
                    # kubectl drain evicts only where discovery names the Eviction's group and version.
                    **({"group": "policy", "version": "v1"} if kind == "Eviction" else {}),
                }
            )
    if group == "":
        entries.append(
            {
                "name": "bindings",
                "singularName": "binding",
                "namespaced": True,
                "kind": "Binding",
                "verbs": ["create"],
            }
        )
    if group == "":
        entries.extend(_unserved_core_entries())
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


# Core resources a kubectl user commonly types that kube-local does not serve. Discovery names them with no
# verbs (the truth: nothing can be done with them here) so that kubectl sends the request and shows
# kube-local's message (sim/kubelocal/unserved.py: what to use instead) rather than its own bare
# `the server doesn't have a resource type "configmaps"`.
UNSERVED_CORE: Final = (
    ("configmaps", "configmap", "ConfigMap", ("cm",)),
    ("secrets", "secret", "Secret", ()),
    ("services", "service", "Service", ("svc",)),
    ("endpoints", "endpoints", "Endpoints", ("ep",)),
    ("persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", ("pvc",)),
    ("replicationcontrollers", "replicationcontroller", "ReplicationController", ("rc",)),
)


def _unserved_core_entries() -> list[Obj]:
    return [
        {
            "name": plural,
            "singularName": singular,
            "namespaced": True,
            "kind": kind,
            "verbs": [],
            **({"shortNames": list(short)} if short else {}),
        }
        for plural, singular, kind, short in UNSERVED_CORE
    ]
