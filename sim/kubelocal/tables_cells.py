"""The cells of a ``kubectl get`` row for each resource kube-local serves: plain functions from a stored
object (JSON as the API serves it) and the current time to the row the real kube-apiserver prints.

The real server prints with its built-in printers and always returns every column (the ``-o wide`` ones
too, at priority 1); kubectl only chooses which to show. The rules here follow what that server answers
(tests/kubelocal/test_tables_differential.py compares them on the same objects): a pod's STATUS from its
phase, reason, init and app container states and deletion; a node's STATUS from its Ready condition and
``spec.unschedulable``; an event's ages from firstTimestamp/eventTime/series; and so on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]
Cell = str | int
#: (object, now) -> cells, in the order of the resource's column definitions.
RowPrinter = Callable[[Obj, dt.datetime], list[Cell]]

NONE = "<none>"
UNKNOWN = "<unknown>"
ROLE_LABEL_PREFIX = "node-role.kubernetes.io/"
ROLE_LABEL = "kubernetes.io/role"


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp (``metav1.Time`` or ``MicroTime``) as an aware datetime; None when unset or
    unreadable (the printers then say ``<unknown>``)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def human_duration(seconds: float) -> str:
    """An age as kubectl prints it: ``45s``, ``2m5s``, ``12m``, ``3h20m``, ``9h``, ``2d3h``, ``30d``,
    ``2y100d``; up to a second in the future counts as now, further ahead is ``<invalid>``."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d" if rest == 0 else f"{days}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        rest = days % 365
        return f"{years}y" if rest == 0 else f"{years}y{rest}d"
    return f"{years}y"


def age(value: Any, now: dt.datetime) -> str:
    """The time since ``value`` (a timestamp string), or ``<unknown>`` when it is unset."""
    when = parse_time(value)
    if when is None:
        return UNKNOWN
    return human_duration((now - when).total_seconds())


def _meta(obj: Obj) -> Obj:
    return _dict(obj.get("metadata"))


def _name(obj: Obj) -> str:
    return _str(_meta(obj).get("name"))


def _created(obj: Obj, now: dt.datetime) -> str:
    return age(_meta(obj).get("creationTimestamp"), now)


# ----- pods


def _is_restartable_init(container: Obj | None) -> bool:
    """A sidecar: an init container with ``restartPolicy: Always``."""
    return container is not None and container.get("restartPolicy") == "Always"


def _condition_true(conditions: list[Any], kind: str) -> bool:
    return any(_dict(c).get("type") == kind and _dict(c).get("status") == "True" for c in conditions)


def _later(current: dt.datetime | None, candidate: Any) -> dt.datetime | None:
    when = parse_time(candidate)
    if when is None or (current is not None and when <= current):
        return current
    return when


def _last_termination(status: Obj) -> Any:
    return _dict(_dict(status.get("lastState")).get("terminated")).get("finishedAt")


def _terminated_reason(terminated: Obj, prefix: str) -> str:
    reason = _str(terminated.get("reason"))
    if reason:
        return prefix + reason
    signal = _int(terminated.get("signal"))
    if signal:
        return f"{prefix}Signal:{signal}"
    return f"{prefix}ExitCode:{_int(terminated.get('exitCode'))}"


class _PodProgress:
    """What walking a pod's container statuses finds: its STATUS reason, ready count and restarts."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.ready = 0
        self.restarts = 0
        self.last_restart: dt.datetime | None = None
        self.sidecar_restarts = 0
        self.last_sidecar_restart: dt.datetime | None = None


def _walk_init_containers(pod: Obj, progress: _PodProgress) -> bool:
    """Counts init container restarts and finds an unfinished init container; True while initialising."""
    spec, status = _dict(pod.get("spec")), _dict(pod.get("status"))
    init_specs = [_dict(c) for c in _list(spec.get("initContainers"))]
    by_name = {_str(c.get("name")): c for c in init_specs}
    for index, raw in enumerate(_list(status.get("initContainerStatuses"))):
        container = _dict(raw)
        count = _int(container.get("restartCount"))
        progress.restarts += count
        progress.last_restart = _later(progress.last_restart, _last_termination(container))
        sidecar = _is_restartable_init(by_name.get(_str(container.get("name"))))
        if sidecar:
            progress.sidecar_restarts += count
            progress.last_sidecar_restart = _later(
                progress.last_sidecar_restart, _last_termination(container)
            )
        state = _dict(container.get("state"))
        terminated = state.get("terminated")
        waiting = _dict(state.get("waiting"))
        if isinstance(terminated, dict) and _int(terminated.get("exitCode")) == 0:
            continue
        if sidecar and container.get("started") is True:
            if container.get("ready") is True:
                progress.ready += 1
            continue
        if isinstance(terminated, dict):
            progress.reason = _terminated_reason(terminated, "Init:")
        elif _str(waiting.get("reason")) and waiting.get("reason") != "PodInitializing":
            progress.reason = "Init:" + _str(waiting.get("reason"))
        else:
            progress.reason = f"Init:{index}/{len(init_specs)}"
        return True
    return False


def _walk_app_containers(pod: Obj, progress: _PodProgress) -> None:
    """The app containers, last first, so the first container's state decides the reason."""
    status = _dict(pod.get("status"))
    progress.restarts = progress.sidecar_restarts
    progress.last_restart = progress.last_sidecar_restart
    running = False
    for raw in reversed(_list(status.get("containerStatuses"))):
        container = _dict(raw)
        progress.restarts += _int(container.get("restartCount"))
        progress.last_restart = _later(progress.last_restart, _last_termination(container))
        state = _dict(container.get("state"))
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if isinstance(waiting, dict) and _str(waiting.get("reason")):
            progress.reason = _str(waiting.get("reason"))
        elif isinstance(terminated, dict):
            progress.reason = _terminated_reason(terminated, "")
        elif container.get("ready") is True and isinstance(state.get("running"), dict):
            running = True
            progress.ready += 1
    if progress.reason == "Completed" and running:
        ready = _condition_true(_list(status.get("conditions")), "Ready")
        progress.reason = "Running" if ready else "NotReady"


def pod_status(pod: Obj) -> tuple[str, int, int, int, dt.datetime | None]:
    """A pod's STATUS column, ready and total container counts, restarts and the last restart time."""
    spec, status = _dict(pod.get("spec")), _dict(pod.get("status"))
    phase = _str(status.get("phase"))
    progress = _PodProgress(_str(status.get("reason")) or phase)
    for condition in _list(status.get("conditions")):
        if (
            _dict(condition).get("type") == "PodScheduled"
            and _dict(condition).get("reason") == "SchedulingGated"
        ):
            progress.reason = "SchedulingGated"
    init_specs = [_dict(c) for c in _list(spec.get("initContainers"))]
    total = len(_list(spec.get("containers"))) + sum(1 for c in init_specs if _is_restartable_init(c))
    initializing = _walk_init_containers(pod, progress)
    if not initializing or _condition_true(_list(status.get("conditions")), "Initialized"):
        _walk_app_containers(pod, progress)
    if _meta(pod).get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            progress.reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            progress.reason = "Terminating"
    return progress.reason, progress.ready, total, progress.restarts, progress.last_restart


def _readiness_gates(pod: Obj) -> str:
    gates = _list(_dict(pod.get("spec")).get("readinessGates"))
    if not gates:
        return NONE
    conditions = [_dict(c) for c in _list(_dict(pod.get("status")).get("conditions"))]
    satisfied = 0
    for gate in gates:
        wanted = _dict(gate).get("conditionType")
        found = next((c for c in conditions if c.get("type") == wanted), None)
        if found is not None and found.get("status") == "True":
            satisfied += 1
    return f"{satisfied}/{len(gates)}"


def pod_cells(pod: Obj, now: dt.datetime) -> list[Cell]:
    """NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES."""
    reason, ready, total, restarts, last_restart = pod_status(pod)
    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"
    spec, status = _dict(pod.get("spec")), _dict(pod.get("status"))
    pod_ips = _list(status.get("podIPs"))
    pod_ip = _str(_dict(pod_ips[0]).get("ip")) if pod_ips else ""
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts_text,
        _created(pod, now),
        pod_ip or NONE,
        _str(spec.get("nodeName")) or NONE,
        _str(status.get("nominatedNodeName")) or NONE,
        _readiness_gates(pod),
    ]


def pod_row_conditions(pod: Obj) -> list[Obj] | None:
    """The row condition the server marks a finished pod's row with (kubectl can hide completed rows)."""
    phase = _dict(pod.get("status")).get("phase")
    if phase == "Succeeded":
        return [
            {
                "type": "Completed",
                "status": "True",
                "reason": "Succeeded",
                "message": "The pod has completed successfully.",
            }
        ]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


# ----- nodes


def node_roles(labels: Mapping[str, Any]) -> list[str]:
    """Roles from ``node-role.kubernetes.io/<role>`` keys and a non-empty ``kubernetes.io/role``, sorted."""
    roles: set[str] = set()
    for key, value in labels.items():
        if key.startswith(ROLE_LABEL_PREFIX):
            role = key[len(ROLE_LABEL_PREFIX) :]
            if role:
                roles.add(role)
        elif key == ROLE_LABEL and value:
            roles.add(str(value))
    return sorted(roles)


def _node_address(node: Obj, kind: str) -> str:
    for address in _list(_dict(node.get("status")).get("addresses")):
        if _dict(address).get("type") == kind:
            return _str(_dict(address).get("address"))
    return NONE


def node_cells(node: Obj, now: dt.datetime) -> list[Cell]:
    """NAME STATUS ROLES AGE VERSION INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME; the
    kernel carries the node's architecture in parentheses when it reports one (``6.8.0 (amd64)``)."""
    status = _dict(node.get("status"))
    ready = [_dict(c) for c in _list(status.get("conditions")) if _dict(c).get("type") == "Ready"]
    # The last Ready condition wins, as when the server maps conditions by type.
    states = ["Ready" if ready[-1].get("status") == "True" else "NotReady"] if ready else ["Unknown"]
    if _dict(node.get("spec")).get("unschedulable") is True:
        states.append("SchedulingDisabled")
    info = _dict(status.get("nodeInfo"))
    kernel = _str(info.get("kernelVersion")) or UNKNOWN
    if _str(info.get("architecture")):
        kernel += f" ({info['architecture']})"
    return [
        _name(node),
        ",".join(states),
        ",".join(node_roles(_dict(_meta(node).get("labels")))) or NONE,
        _created(node, now),
        _str(info.get("kubeletVersion")),
        _node_address(node, "InternalIP"),
        _node_address(node, "ExternalIP"),
        _str(info.get("osImage")) or UNKNOWN,
        kernel,
        _str(info.get("containerRuntimeVersion")) or UNKNOWN,
    ]


# ----- the other served kinds


def namespace_cells(namespace: Obj, now: dt.datetime) -> list[Cell]:
    """NAME STATUS AGE."""
    return [_name(namespace), _str(_dict(namespace.get("status")).get("phase")), _created(namespace, now)]


def _event_source(event: Obj) -> str:
    source = _dict(event.get("source"))
    component = _str(source.get("component")) or _str(event.get("reportingComponent"))
    instance = _str(source.get("host")) or _str(event.get("reportingInstance"))
    return f"{component}, {instance}" if instance else component


def event_cells(event: Obj, now: dt.datetime) -> list[Cell]:
    """LAST SEEN TYPE REASON OBJECT SUBOBJECT SOURCE MESSAGE FIRST SEEN COUNT NAME."""
    first_seen = (
        age(event.get("firstTimestamp"), now)
        if parse_time(event.get("firstTimestamp"))
        else age(event.get("eventTime"), now)
    )
    last_seen = age(event.get("lastTimestamp"), now) if parse_time(event.get("lastTimestamp")) else first_seen
    count = _int(event.get("count"))
    series = event.get("series")
    if isinstance(series, dict):
        last_seen = age(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1  # a singleton event of the events.k8s.io API carries no count
    involved = _dict(event.get("involvedObject"))
    kind, name = _str(involved.get("kind")).lower(), _str(involved.get("name"))
    return [
        last_seen,
        _str(event.get("type")),
        _str(event.get("reason")),
        f"{kind}/{name}" if name else kind,
        _str(involved.get("fieldPath")),
        _event_source(event),
        _str(event.get("message")).strip(),
        first_seen,
        count,
        _name(event),
    ]


def _quantity(value: Any) -> str:
    # Stored quantities are canonical strings already (docs/kubelocal-differences.md#quantities); an absent
    # one is Go's zero Quantity, "0".
    if isinstance(value, bool) or value is None:
        return "0"
    return str(value)


def resource_quota_cells(quota: Obj, now: dt.datetime) -> list[Cell]:
    """NAME REQUEST LIMIT AGE: ``resource: used/hard`` per hard limit, ``limits.*`` in LIMIT."""
    status = _dict(quota.get("status"))
    hard, used = _dict(status.get("hard")), _dict(status.get("used"))
    requests: list[str] = []
    limits: list[str] = []
    for resource in sorted(hard):
        parts = resource.split(".")
        column = limits if len(parts) > 1 and parts[0] == "limits" else requests
        column.append(f"{resource}: {_quantity(used.get(resource))}/{_quantity(hard[resource])}")
    return [_name(quota), ", ".join(requests), ", ".join(limits), _created(quota, now)]


def lease_cells(lease: Obj, now: dt.datetime) -> list[Cell]:
    """NAME HOLDER AGE."""
    return [_name(lease), _str(_dict(lease.get("spec")).get("holderIdentity")), _created(lease, now)]


def webhook_configuration_cells(config: Obj, now: dt.datetime) -> list[Cell]:
    """NAME WEBHOOKS AGE (the count is an integer cell)."""
    return [_name(config), len(_list(config.get("webhooks"))), _created(config, now)]


def name_age_cells(obj: Obj, now: dt.datetime) -> list[Cell]:
    """NAME AGE (e.g. ServiceAccounts)."""
    return [_name(obj), _created(obj, now)]


#: Printer per resource key (``ResourceType.key``); tests/kubelocal/test_tables.py checks every served kind
#: has one, with as many cells as the real server's columns.
PRINTERS: dict[str, RowPrinter] = {
    "pods": pod_cells,
    "nodes": node_cells,
    "namespaces": namespace_cells,
    "events": event_cells,
    "resourcequotas": resource_quota_cells,
    "coordination.k8s.io/leases": lease_cells,
    "admissionregistration.k8s.io/mutatingwebhookconfigurations": webhook_configuration_cells,
    "serviceaccounts": name_age_cells,
}
