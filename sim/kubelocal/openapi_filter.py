"""Cutting the real kube-apiserver's OpenAPI documents down to what kube-local serves.

kube-local publishes the upstream server's own OpenAPI v2 and v3 documents (scripts/gen_kubelocal_apidocs.py
fetches them from sim/controlplane's kube-apiserver), keeping only the paths kube-local answers (its
resources, their served subresources, ``bindings``, the discovery roots) and the schemas and parameters
those paths reach through ``$ref``. What remains is byte for byte the real server's text for those
paths and types, so ``kubectl explain``, ``apply`` and ``edit`` see the same schema as on a cluster.

Pure functions over parsed JSON; the resource table is passed in, so the same filter runs in the generator
and in the test that compares the committed documents with a live server.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sim.kubelocal.resources import ResourceType

Doc = dict[str, Any]
GroupVersion = tuple[str, str]
Served = Mapping[GroupVersion, Mapping[str, ResourceType]]

#: Top-level v3 documents kept whole: the discovery roots and /version, which kube-local answers too.
WHOLE_V3_DOCUMENTS = ("api", "apis", "version")


def v3_document_name(group: str, version: str) -> str:
    """A group version's document name in ``/openapi/v3`` (``api/v1``, ``apis/coordination.k8s.io/v1``)."""
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def is_group_version_document(name: str) -> bool:
    """Whether a ``/openapi/v3`` document describes one group version's resources (and so is filtered)."""
    parts = name.split("/")
    return (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3)


def v3_document_names(served: Served) -> list[str]:
    """Every ``/openapi/v3`` document kube-local publishes, sorted."""
    names = set(WHOLE_V3_DOCUMENTS)
    for group, version in served:
        names.add(v3_document_name(group, version))
        if group:
            names.add(f"apis/{group}")
    return sorted(names)


def _split_group_version(path: str) -> tuple[GroupVersion, list[str]] | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        return ("", parts[1]), parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return (parts[1], parts[2]), parts[3:]
    return None


def path_served(path: str, served: Served) -> bool:
    """Whether kube-local answers this OpenAPI path template (``/api/v1/namespaces/{namespace}/pods``).

    The group version's resource list, each served resource's collection and object paths (namespaced
    and across namespaces), its served subresources and the core group's ``bindings``; not the legacy
    ``/watch/`` paths, nor subresources kube-local has nothing behind (``log``, ``exec``, ``proxy``...)."""
    split = _split_group_version(path)
    if split is None:
        return False
    group_version, rest = split
    resources = served.get(group_version)
    if resources is None:
        return False
    if not rest:
        return True
    if group_version == ("", "v1") and rest == ["namespaces", "{namespace}", "bindings"]:
        return True
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[1] == "{namespace}" and rest[2] in resources:
        rt, tail = resources[rest[2]], rest[3:]
        if not rt.namespaced:
            return False
    elif rest[0] in resources:
        rt, tail = resources[rest[0]], rest[1:]
        if rt.namespaced and tail:
            return False
    else:
        return False
    if len(tail) > 2 or (tail and tail[0] != "{name}"):
        return False
    return len(tail) < 2 or tail[1] in rt.subresources


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` string anywhere under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def _closure(roots: Iterable[Any], sections: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    """The names reached from ``roots`` through ``$ref``, per section prefix (``#/definitions/`` ...)."""
    reached: dict[str, set[str]] = {prefix: set() for prefix in sections}
    pending = [ref for root in roots for ref in refs(root)]
    while pending:
        ref = pending.pop()
        for prefix, section in sections.items():
            if ref.startswith(prefix):
                name = ref[len(prefix) :]
                if name not in reached[prefix]:
                    if name not in section:
                        raise ValueError(f"dangling reference {ref!r} in the OpenAPI document")
                    reached[prefix].add(name)
                    pending.extend(refs(section[name]))
                break
    return reached


def _kept(section: Mapping[str, Any], names: set[str]) -> dict[str, Any]:
    # The server's order, so the filtered document reads like the original.
    return {name: value for name, value in section.items() if name in names}


def filter_v2(document: Doc, served: Served) -> Doc:
    """The v2 (swagger) document with only the served paths and the definitions/parameters they reach."""
    paths = {path: item for path, item in document["paths"].items() if path_served(path, served)}
    sections = {
        "#/definitions/": document.get("definitions", {}),
        "#/parameters/": document.get("parameters", {}),
    }
    reached = _closure(paths.values(), sections)
    result: Doc = {}
    for key, value in document.items():
        if key == "paths":
            result[key] = paths
        elif key == "definitions":
            result[key] = _kept(value, reached["#/definitions/"])
        elif key == "parameters":
            result[key] = _kept(value, reached["#/parameters/"])
        else:
            result[key] = value
    return result


def filter_v3(document: Doc, served: Served) -> Doc:
    """A v3 group-version document with only the served paths and the component schemas they reach."""
    paths = {path: item for path, item in document["paths"].items() if path_served(path, served)}
    components = document.get("components", {})
    schemas = components.get("schemas", {})
    reached = _closure(paths.values(), {"#/components/schemas/": schemas})
    result: Doc = {}
    for key, value in document.items():
        if key == "paths":
            result[key] = paths
        elif key == "components":
            result[key] = {
                name: (_kept(section, reached["#/components/schemas/"]) if name == "schemas" else section)
                for name, section in value.items()
            }
        else:
            result[key] = value
    return result
