"""The kube-scheduler extender v1 JSON (docs/hami-wire.md#extender-routes): decoding requests, encoding
answers. Pure functions.

The Go structs carry no JSON tags, so the wire names are the Go field names (`Pod`, `NodeNames`,
`FailedNodes`, ...), and Go's decoder matches keys case-insensitively: `{"pod": ...}` and `{"POD": ...}` mean
the same as `{"Pod": ...}`; when several spellings are present the last one wins. Answers always use the Go
field names with every key present, as HAMi's Go-marshalled output has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.common.names import label_problem, subdomain_problem

__all__ = [
    "MISSING_POD",
    "BindArgs",
    "ExtenderArgs",
    "ExtenderRequestError",
    "bind_result",
    "decode_bind_args",
    "decode_extender_args",
    "filter_result",
    "priority_list",
]

# HAMi's exact error text for an ExtenderArgs without a pod (pkg/scheduler/routes/route.go).
MISSING_POD: Final = "extender args missing pod"

Obj = dict[str, Any]


class ExtenderRequestError(ValueError):
    """A request body that cannot be used; the message goes back in `Error`."""


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """`ExtenderArgs`: the pod and the candidate nodes, either as names (nodeCacheCapable) or full objects.

    `nodes` is None when the caller sent names only; `node_names` then holds them (None when absent too).
    """

    pod: Obj
    nodes: list[Obj] | None
    node_names: list[str] | None

    @property
    def candidate_names(self) -> list[str]:
        """The candidate node names, from the Node objects when those were sent."""
        if self.nodes is not None:
            return [node_name(n) for n in self.nodes]
        return list(self.node_names or [])


@dataclass(frozen=True, slots=True)
class BindArgs:
    """`ExtenderBindingArgs`."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


def node_name(node: Mapping[str, Any]) -> str:
    metadata = node.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def _load_object(body: bytes | str, what: str) -> Obj:
    try:
        # orjson: several times faster than `json` on a pod and hundreds of node names; like Go's decoder it
        # takes UTF-8 only and refuses NaN, and nesting deeper than 1024 is a decode error, not a crash.
        document = orjson.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ExtenderRequestError(f"cannot decode {what}: {exc}") from None
    if not isinstance(document, dict):
        raise ExtenderRequestError(f"cannot decode {what}: want a JSON object, got {type(document).__name__}")
    return document


def _fields(document: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """Members matched to `names` case-insensitively (Go's rule); a later spelling overrides an earlier one,
    and `null` leaves the field unset."""
    folded = {name.casefold(): name for name in names}
    found: dict[str, Any] = {}
    for key, value in document.items():
        name = folded.get(key.casefold()) if isinstance(key, str) else None
        if name is None:
            continue
        if value is None:
            found.pop(name, None)
        else:
            found[name] = value
    return found


def decode_extender_args(body: bytes | str) -> ExtenderArgs:
    """The `ExtenderArgs` of a filter or prioritize call; raises `ExtenderRequestError` with HAMi's
    `extender args missing pod` when there is no pod."""
    found = _fields(_load_object(body, "extender args"), "Pod", "Nodes", "NodeNames")
    pod = found.get("Pod")
    if pod is None:
        raise ExtenderRequestError(MISSING_POD)
    if not isinstance(pod, dict):
        raise ExtenderRequestError(f"cannot decode extender args: Pod must be an object, got {_kind(pod)}")
    nodes: list[Obj] | None = None
    if "Nodes" in found:
        node_list = found["Nodes"]
        items = node_list.get("items") if isinstance(node_list, dict) else None
        if not isinstance(node_list, dict) or not isinstance(items, list | None):
            raise ExtenderRequestError("cannot decode extender args: Nodes must be a NodeList object")
        if any(not isinstance(item, dict) for item in items or []):
            raise ExtenderRequestError("cannot decode extender args: Nodes.items must hold Node objects")
        nodes = list(items or [])
    names: list[str] | None = None
    if "NodeNames" in found:
        raw = found["NodeNames"]
        if not isinstance(raw, list) or not set(map(type, raw)) <= {str}:  # JSON strings are exactly `str`
            raise ExtenderRequestError("cannot decode extender args: NodeNames must be a list of strings")
        names = list(raw)
    return ExtenderArgs(pod=pod, nodes=nodes, node_names=names)


def decode_bind_args(body: bytes | str) -> BindArgs:
    """The `ExtenderBindingArgs` of a bind call; pod name and node are required."""
    found = _fields(_load_object(body, "extender binding args"), "PodName", "PodNamespace", "PodUID", "Node")
    for key, value in found.items():
        if not isinstance(value, str):
            raise ExtenderRequestError(f"cannot decode extender binding args: {key} must be a string")
    args = BindArgs(
        pod_name=found.get("PodName", ""),
        pod_namespace=found.get("PodNamespace", "") or "default",
        pod_uid=found.get("PodUID", ""),
        node=found.get("Node", ""),
    )
    if not args.pod_name:
        raise ExtenderRequestError("extender binding args missing PodName")
    if not args.node:
        raise ExtenderRequestError("extender binding args missing Node")
    for key, value, problem in (
        ("PodName", args.pod_name, subdomain_problem(args.pod_name)),
        ("PodNamespace", args.pod_namespace, label_problem(args.pod_namespace)),
        ("Node", args.node, subdomain_problem(args.node)),
    ):
        if problem is not None:
            raise ExtenderRequestError(
                f"extender binding args: {key} {value!r} is not a valid name: {problem}"
            )
    return args


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def filter_result(
    *,
    node_names: Sequence[str] | None = None,
    nodes: Sequence[Obj] | None = None,
    failed: Mapping[str, str] | None = None,
    unresolvable: Mapping[str, str] | None = None,
    error: str = "",
) -> Obj:
    """`ExtenderFilterResult` with all five keys (Go nil slices/maps are JSON null)."""
    return {
        "Nodes": {"metadata": {}, "items": list(nodes)} if nodes is not None else None,
        "NodeNames": list(node_names) if node_names is not None else None,
        "FailedNodes": dict(failed) if failed else None,
        "FailedAndUnresolvableNodes": dict(unresolvable) if unresolvable else None,
        "Error": error,
    }


def priority_list(scores: Mapping[str, int], order: Sequence[str]) -> list[Obj]:
    """`HostPriorityList`: one `{Host, Score}` per candidate, in the candidates' order."""
    return [{"Host": host, "Score": int(scores.get(host, 0))} for host in order]


def bind_result(error: str = "") -> Obj:
    """`ExtenderBindingResult`."""
    return {"Error": error}
