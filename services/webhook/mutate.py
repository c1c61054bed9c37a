"""The admission decision for one pod: every rule of HAMi's mutating webhook (spec section 4), in order.

Pure: a pod as a plain JSON dict, the policy, and read-only views of quota and GPU inventory go in; a
``Decision`` (allowed / denied / errored, message, RFC 6902 patch) comes out. Nothing here does I/O or logs;
``Decision.notes`` carries what the caller should log.

Rules, in order (numbers are the spec's):

0. A pod labelled ``hami.io/webhook: ignore`` is allowed untouched (the webhook registration's
   objectSelector excludes it already; this covers callers that do not apply selectors).
1. A pod that does not decode (wrong JSON types in the fields the webhook reads, an invalid quantity) ->
   errored 400.
2. No (app) containers -> denied ``pod has no containers``.
3. A pod naming another scheduler is allowed unmodified (``pod already has different scheduler assigned``).
4. Per init container, then per app container (NVIDIA ``MutateAdmission``):
   (kube-vgpu) ``nvidia.com/gpu``, ``gpumem`` or ``gpucores`` not a whole number in range (negative,
      fractional, absurd) -> denied, naming the container and the resource;
   a. ``gpumem-percentage`` not an integer in [0, 100] -> errored 500;
   b. ``nvidia.com/priority`` limit -> env ``CUDA_TASK_PRIORITY``;
   c. ``gpuCorePolicy`` other than ``default`` -> env ``GPU_CORE_UTILIZATION_POLICY`` (every container);
   d. ``nvidia.com/gpu`` present -> the pod has a GPU resource; else gpucores/gpumem/percentage present and
      ``defaultGPUNum > 0`` -> add the ``nvidia.com/gpu`` limit;
   e. a GPU container that asks for the whole card (percentage 100, or neither percentage nor gpumem with no
      ``defaultMemory``) and names no gpucores gets ``gpucores: 100`` (exclusive card);
   f. ``runtimeClassName`` from the device config when the pod has none;
   g. a container without GPU resource gets ``NVIDIA_VISIBLE_DEVICES=none`` when ``overwriteEnv``.
5. A privileged container in a GPU pod -> denied ``container <name> is privileged``.
6. GPU pod: ``spec.schedulerName`` = the configured scheduler; already bound (``spec.nodeName``) -> denied
   ``pod has node assigned``.
6b. (kube-vgpu) A GPU request that no registered node could ever hold -> denied, naming the container and why
   (only with a synced inventory of at least one GPU node).
7. Namespace quota pre-check -> denied ``exceeding resource quota`` (details in ``warnings``).
8. Allowed, with the JSON patch from the original pod to the mutated one (none when nothing changed).

Where HAMi reads a resource from limits only, this module looks at limits and then requests, as the
scheduler's request parsing does (docs/hami-wire.md#request-parsing), so that webhook and scheduler agree on
which containers ask for a GPU. An env var the webhook sets replaces an existing entry of the same name
instead of appending a duplicate; the container sees the same value either way.
"""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.common import wire
from services.common.device_config import NvidiaConfig
from services.common.model import ContainerDeviceRequest
from services.common.resources import (
    INT32_MAX,
    QuantityError,
    generate_container_request,
    parse_quantity,
    quantity_as_int64,
)
from services.webhook.jsonpatch import JsonPatchOp, diff

__all__ = [
    "ENV_CORE_POLICY",
    "ENV_TASK_PRIORITY",
    "ENV_VISIBLE_DEVICES",
    "MSG_DIFFERENT_SCHEDULER",
    "MSG_NODE_ASSIGNED",
    "MSG_NO_CONTAINERS",
    "MSG_QUOTA",
    "Decision",
    "MutationPolicy",
    "NodeGpus",
    "Outcome",
    "QuotaEntry",
    "QuotaView",
    "admit_pod",
    "percentage_error",
    "privileged_message",
    "quantity_error",
]

ENV_TASK_PRIORITY: Final = "CUDA_TASK_PRIORITY"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
ENV_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"

MSG_NO_CONTAINERS: Final = "pod has no containers"
MSG_DIFFERENT_SCHEDULER: Final = "pod already has different scheduler assigned"
MSG_NODE_ASSIGNED: Final = "pod has node assigned"
MSG_QUOTA: Final = "exceeding resource quota"
MSG_IGNORED: Final = f"pod is labelled {wire.WEBHOOK_LABEL}={wire.WEBHOOK_IGNORE}"

_CONTAINER_KEYS: Final = ("initContainers", "containers")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


class Outcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"
    ERRORED = "errored"


@dataclass(frozen=True)
class MutationPolicy:
    """What the decision depends on besides the pod: webhook flags and the device config's nvidia section."""

    scheduler_name: str = wire.SCHEDULER_NAME
    force_overwrite_default_scheduler: bool = True
    nvidia: NvidiaConfig = field(default_factory=NvidiaConfig)
    reject_unplaceable: bool = True


@dataclass(frozen=True)
class QuotaEntry:
    """One quota-tracked resource of a namespace: the hard limit (the smallest when several ResourceQuotas
    set it) and the usage of the GPU pods already placed there (MiB x memoryFactor for memory)."""

    limit: int
    used: int


# Resource name (e.g. `nvidia.com/gpumem`) -> entry, for the namespace of the pod being admitted.
QuotaView = Mapping[str, QuotaEntry]


@dataclass(frozen=True)
class NodeGpus:
    """A registered GPU node as the inventory check needs it: the memory (MiB) of each registered card."""

    node: str
    devmem: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    code: int
    message: str = ""
    patch: tuple[JsonPatchOp, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # for the log, not for the client
    has_resource: bool = False

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED


def _allowed(message: str = "", **kw: Any) -> Decision:
    return Decision(Outcome.ALLOWED, 200, message, **kw)


def _denied(message: str, **kw: Any) -> Decision:
    return Decision(Outcome.DENIED, 403, message, **kw)


def _errored(code: int, message: str, **kw: Any) -> Decision:
    return Decision(Outcome.ERRORED, code, message, **kw)


def privileged_message(container: str) -> str:
    return f"container {container} is privileged"


def percentage_error(resource: str, value: str, container: str) -> str:
    return f"invalid {resource} value {value} in container {container}: must be an integer between 0 and 100"


def quantity_error(resource: str, value: str, container: str, high: int | None) -> str:
    limit = f"between 0 and {high}" if high is not None else "of at least 0"
    return f"invalid {resource} value {value} in container {container}: must be a whole number {limit}"


# --- decoding: the fields the webhook reads must have the types a Go Pod decoder demands -----------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_type(value: object, want: type, what: str, path: str) -> str | None:
    """None when ``value`` is null (Go leaves the field at its zero value) or of the wanted JSON type."""
    if value is None:
        return None
    ok = isinstance(value, bool) if want is bool else isinstance(value, want) and not isinstance(value, bool)
    return None if ok else f"{path}: expected {what}, got {_json_type(value)}"


def _show(raw: object) -> str:
    return raw if isinstance(raw, str) else repr(raw)


def _container_problem(container: object, path: str) -> str | None:
    if not isinstance(container, dict):
        return f"{path}: expected object, got {_json_type(container)}"
    checks: list[tuple[object, type, str, str]] = [
        (container.get("name"), str, "string", f"{path}.name"),
        (container.get("resources"), dict, "object", f"{path}.resources"),
        (container.get("env"), list, "array", f"{path}.env"),
        (container.get("securityContext"), dict, "object", f"{path}.securityContext"),
        (container.get("restartPolicy"), str, "string", f"{path}.restartPolicy"),
    ]
    for value, want, what, where in checks:
        problem = _check_type(value, want, what, where)
        if problem:
            return problem
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        entries = resources.get(section)
        problem = _check_type(entries, dict, "object", f"{path}.resources.{section}")
        if problem:
            return problem
        for name, raw in (entries or {}).items():
            where = f"{path}.resources.{section}[{name}]"
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                return f"{where}: expected a quantity, got {_json_type(raw)}"
            try:
                parse_quantity(raw)
            except (QuantityError, ValueError) as exc:  # ValueError: too many digits for int()
                return f"{where}: {exc}"
    for index, entry in enumerate(container.get("env") or []):
        if not isinstance(entry, dict):
            return f"{path}.env[{index}]: expected object, got {_json_type(entry)}"
        problem = _check_type(entry.get("name"), str, "string", f"{path}.env[{index}].name")
        if problem:
            return problem
    security = container.get("securityContext") or {}
    return _check_type(security.get("privileged"), bool, "boolean", f"{path}.securityContext.privileged")


def _decode_problem(pod: object) -> str | None:
    """Why ``pod`` is not a decodable Pod, or None. Only the fields the webhook reads are checked."""
    if not isinstance(pod, dict):
        return f"object: expected a Pod object, got {_json_type(pod)}"
    kind = pod.get("kind")
    if kind is not None and kind != "Pod":
        return f"object: expected kind Pod, got {_show(kind)}"
    metadata = pod.get("metadata")
    problem = _check_type(metadata, dict, "object", "metadata")
    if problem:
        return problem
    labels = (metadata or {}).get("labels")
    problem = _check_type(labels, dict, "object", "metadata.labels")
    if problem:
        return problem
    for key, value in (labels or {}).items():
        if not isinstance(value, str):
            return f"metadata.labels[{key}]: expected string, got {_json_type(value)}"
    spec = pod.get("spec")
    problem = _check_type(spec, dict, "object", "spec")
    if problem:
        return problem
    spec = spec or {}
    for key in ("schedulerName", "nodeName", "runtimeClassName"):
        problem = _check_type(spec.get(key), str, "string", f"spec.{key}")
        if problem:
            return problem
    for key in _CONTAINER_KEYS:
        containers = spec.get(key)
        problem = _check_type(containers, list, "array", f"spec.{key}")
        if problem:
            return problem
        for index, container in enumerate(containers or []):
            problem = _container_problem(container, f"spec.{key}[{index}]")
            if problem:
                return problem
    return None


# --- container helpers -------------------------------------------------------------------------------------


def _lookup(container: Mapping[str, Any], name: str) -> tuple[bool, object]:
    """(present, raw value) of a resource: limits first, then requests (docs/hami-wire.md#request-parsing)."""
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        entries = resources.get(section) or {}
        if name in entries:
            return True, entries[name]
    return False, None


def _int_value(raw: object) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return None
    return quantity_as_int64(raw)


def _whole_value(raw: object) -> int | None:
    """The quantity as an integer when it is a whole number of any size, else None."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return None
    try:
        parsed = parse_quantity(raw)
    except QuantityError:
        return None
    return parsed.numerator if parsed.denominator == 1 else None


def _set_limit(container: dict[str, Any], name: str, value: str) -> None:
    resources = container.get("resources")
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    limits = resources.get("limits")
    if not isinstance(limits, dict):
        limits = resources["limits"] = {}
    limits[name] = value


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    """Set ``name=value``: the last entry of that name is replaced (it is the one a container sees), else
    the variable is appended."""
    env = container.get("env")
    if not isinstance(env, list):
        env = container["env"] = []
    for index in range(len(env) - 1, -1, -1):
        if env[index].get("name") == name:
            env[index] = {"name": name, "value": value}
            return
    env.append({"name": name, "value": value})


def _container_name(container: Mapping[str, Any]) -> str:
    name = container.get("name")
    return name if isinstance(name, str) else ""


class _Errored(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Rejected(Exception):
    """A request the pod must not be admitted with; the message names the container and the resource."""


def _check_whole_quantities(container: Mapping[str, Any], cfg: NvidiaConfig) -> None:
    """Count, memory and cores must be whole numbers in range wherever they are given. HAMi's derivation
    reads any other value as "no GPU request", so `nvidia.com/gpu: 1` with `gpumem: "-5"`, a count of 0.5
    or 10^300 used to be admitted as a CPU pod (issue 17): the user's request silently vanished. An oversized
    gpumem is left to rule 6b, whose message names the largest card (and "16Gi" as a number of MiB)."""
    name = _container_name(container)
    resources = container.get("resources") or {}
    bounds: tuple[tuple[str, int | None], ...] = (
        (cfg.resource_count_name, INT32_MAX),
        (cfg.resource_memory_name, None),
        (cfg.resource_core_name, INT32_MAX),
    )
    for section in ("limits", "requests"):
        entries = resources.get(section) or {}
        for resource, high in bounds:
            if resource in entries:
                raw = entries[resource]
                value = _whole_value(raw)
                if value is None or value < 0 or (high is not None and value > high):
                    raise _Rejected(quantity_error(resource, _show(raw), name, high))


def _mutate_container(container: dict[str, Any], spec: dict[str, Any], cfg: NvidiaConfig) -> bool:
    """Rule 4 for one container, in place; True when it asks for an NVIDIA GPU (HAMi `MutateAdmission`)."""
    name = _container_name(container)
    resources = container.get("resources") or {}
    _check_whole_quantities(container, cfg)
    # a. The percentage must be an integer in [0, 100], wherever it is given.
    for section in ("limits", "requests"):
        entries = resources.get(section) or {}
        if cfg.resource_memory_percentage_name in entries:
            raw = entries[cfg.resource_memory_percentage_name]
            value = _int_value(raw)
            if value is None or not 0 <= value <= 100:
                raise _Errored(500, percentage_error(cfg.resource_memory_percentage_name, _show(raw), name))
    # b. Task priority (limits only, as HAMi reads it), rounded up to an integer like Quantity.Value().
    limits = resources.get("limits") or {}
    if cfg.resource_priority_name in limits:
        priority = math.ceil(parse_quantity(limits[cfg.resource_priority_name]))
        priority = min(max(priority, _INT64_MIN), _INT64_MAX)  # Quantity.Value() is an int64
        _set_env(container, ENV_TASK_PRIORITY, str(priority))
    # c. Core utilisation policy, for every container.
    if cfg.gpu_core_policy != "default":
        _set_env(container, ENV_CORE_POLICY, cfg.gpu_core_policy)
    # d. Does the container ask for a GPU? Memory/cores alone imply `defaultGPUNum` GPUs.
    has_count, _ = _lookup(container, cfg.resource_count_name)
    has_cores, _ = _lookup(container, cfg.resource_core_name)
    has_mem, _ = _lookup(container, cfg.resource_memory_name)
    has_pct, raw_pct = _lookup(container, cfg.resource_memory_percentage_name)
    found = has_count
    if not found and (has_cores or has_mem or has_pct) and cfg.default_gpu_num > 0:
        _set_limit(container, cfg.resource_count_name, str(cfg.default_gpu_num))
        found = True
    # e. Whole card asked for and no cores named: the card is exclusive (gpucores 100).
    if found and not has_cores:
        whole_card = (has_pct and _int_value(raw_pct) == 100) or (
            not has_pct and not has_mem and cfg.default_memory == 0
        )
        if whole_card:
            _set_limit(container, cfg.resource_core_name, "100")
    # f. Runtime class for GPU pods.
    if found and not spec.get("runtimeClassName") and cfg.runtime_class_name:
        spec["runtimeClassName"] = cfg.runtime_class_name
    # g. Hide the host's GPUs from containers that asked for none.
    if not found and cfg.overwrite_env:
        _set_env(container, ENV_VISIBLE_DEVICES, "none")
    return found


# --- rule 6b: requests no registered node could ever hold -------------------------------------------------


def _unplaceable(
    container: Mapping[str, Any], inventory: Sequence[NodeGpus], cfg: NvidiaConfig
) -> str | None:
    name = _container_name(container)
    resources = container.get("resources") or {}
    request = generate_container_request(resources, cfg.request_config())
    factor = max(cfg.memory_factor, 1)
    if request is not None:
        nums, memreq, cores = request.nums, request.memreq, request.coresreq
    else:
        # HAMi drops an unparsable request entirely; judge the raw values so that e.g. `gpumem: 16Gi` (which
        # is 2^34 MiB, not 16 GiB) is explained instead of silently running without a memory limit.
        nums = _int_value(_lookup(container, cfg.resource_count_name)[1]) or 0
        memreq = max(_int_value(_lookup(container, cfg.resource_memory_name)[1]) or 0, 0) * factor
        cores = _int_value(_lookup(container, cfg.resource_core_name)[1]) or 0
        if nums <= 0:
            return None
    if cores > 100:
        return (
            f"container {name} requests {cfg.resource_core_name} {cores}: that is a percentage of one GPU's "
            "compute, at most 100"
        )
    most = max(len(node.devmem) for node in inventory)
    if nums > most:
        return (
            f"container {name} requests {nums} {cfg.resource_count_name} but the largest registered node has "
            f"{most} GPU{'s' if most != 1 else ''}"
        )
    if memreq <= 0:
        return None
    raw_mem = _lookup(container, cfg.resource_memory_name)[1]
    if raw_mem is None:
        asked = f"{memreq} MiB (defaultMemory)"
    elif factor > 1:
        asked = f"{cfg.resource_memory_name} {_show(raw_mem)} (x{factor} memoryFactor = {memreq} MiB)"
    elif isinstance(raw_mem, int) or (isinstance(raw_mem, str) and raw_mem.isdigit()):
        asked = f"{cfg.resource_memory_name} {_show(raw_mem)} MiB"
    else:
        asked = f"{cfg.resource_memory_name} {_show(raw_mem)} (= {memreq} MiB)"
    biggest = max((mem for node in inventory for mem in node.devmem), default=0)
    if memreq > biggest:
        return (
            f"container {name} requests {asked} per GPU but the largest registered GPU has {biggest} MiB"
            + (" (gpumem is a number of MiB)" if memreq > INT32_MAX else "")
        )
    best = max(sum(1 for mem in node.devmem if mem >= memreq) for node in inventory)
    if best < nums:
        return (
            f"container {name} requests {nums} {cfg.resource_count_name} with {asked} each but no registered "
            f"node has {nums} GPUs that large (at most {best})"
        )
    return None


# --- rule 7: quota pre-check ----------------------------------------------------------------------------


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    # A native sidecar (init container with restartPolicy Always) runs beside the app containers.
    return container.get("restartPolicy") == "Always"


def _quota_problem(spec: Mapping[str, Any], quota: QuotaView, cfg: NvidiaConfig) -> str | None:
    """Why the pod would exceed its namespace's GPU quota, or None (docs/hami-wire.md#webhook-rules rule 7).

    App containers (and native sidecars) add up `request x GPUs`; init containers run one at a time, so the
    largest counts; the pod needs max(app sum, init max). Percentage-only memory counts 0 here.
    """
    request_cfg = cfg.request_config()
    app_mem = app_cores = init_mem = init_cores = 0
    for key in _CONTAINER_KEYS:
        for container in spec.get(key) or []:
            request: ContainerDeviceRequest | None = generate_container_request(
                container.get("resources") or {}, request_cfg
            )
            if request is None:
                continue
            mem, cores = request.memreq * request.nums, request.coresreq * request.nums
            if key == "containers" or _is_sidecar(container):
                app_mem += mem
                app_cores += cores
            else:
                init_mem = max(init_mem, mem)
                init_cores = max(init_cores, cores)
    needs = (
        (cfg.resource_memory_name, max(app_mem, init_mem), max(cfg.memory_factor, 1)),
        (cfg.resource_core_name, max(app_cores, init_cores), 1),
    )
    for resource, amount, scale in needs:
        entry = quota.get(resource)
        if entry is None or amount <= 0:
            continue
        limit = entry.limit * scale
        if entry.used + amount > limit:
            return (
                f"limits.{resource}: the pod needs {amount}, the namespace already uses {entry.used} of "
                f"{limit}" + (f" ({entry.limit} x memoryFactor {scale})" if scale > 1 else "")
            )
    return None


# --- the decision ------------------------------------------------------------------------------------------


def admit_pod(
    pod: object,
    policy: MutationPolicy,
    *,
    quota: QuotaView | None = None,
    inventory: Sequence[NodeGpus] | None = None,
) -> Decision:
    """The webhook's answer for ``pod`` (the AdmissionReview's ``request.object``).

    ``quota`` is the pod's namespace's quota view, None when unknown (the pre-check is then skipped);
    ``inventory`` the registered GPU nodes, None when the cache has not synced.
    """
    problem = _decode_problem(pod)
    if problem is not None or not isinstance(pod, dict):
        return _errored(400, f"cannot decode the pod: {problem}")
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(wire.WEBHOOK_LABEL) == wire.WEBHOOK_IGNORE:
        return _allowed(MSG_IGNORED)
    spec: dict[str, Any] = pod.get("spec") or {}
    if not spec.get("containers"):
        return _denied(MSG_NO_CONTAINERS)

    current = spec.get("schedulerName") or ""
    if (
        current
        and (current != wire.DEFAULT_SCHEDULER_NAME or not policy.force_overwrite_default_scheduler)
        and (not policy.scheduler_name or current != policy.scheduler_name)
    ):
        return _allowed(MSG_DIFFERENT_SCHEDULER)

    cfg = policy.nvidia
    mutated: dict[str, Any] = copy.deepcopy(pod)
    mutated_spec: dict[str, Any] = mutated.setdefault("spec", {})
    containers: list[dict[str, Any]] = [c for key in _CONTAINER_KEYS for c in (mutated_spec.get(key) or [])]
    has_resource = False
    for container in containers:
        try:
            has_resource = _mutate_container(container, mutated_spec, cfg) or has_resource
        except _Errored as err:
            return _errored(err.code, err.message)
        except _Rejected as err:
            return _denied(str(err))

    if has_resource:
        for container in containers:
            if (container.get("securityContext") or {}).get("privileged") is True:
                return _denied(privileged_message(_container_name(container)), has_resource=True)
        if policy.scheduler_name:
            mutated_spec["schedulerName"] = policy.scheduler_name
            if mutated_spec.get("nodeName"):
                return _denied(MSG_NODE_ASSIGNED, has_resource=True)

    notes: list[str] = []
    if has_resource and policy.reject_unplaceable:
        if inventory is None:
            notes.append("GPU inventory not synced yet: unplaceable-request check skipped")
        elif not inventory:
            notes.append("no registered GPU node: unplaceable-request check skipped")
        else:
            for container in containers:
                reason = _unplaceable(container, inventory, cfg)
                if reason is not None:
                    return _denied(reason, has_resource=True, notes=tuple(notes))

    if quota is None:
        if has_resource:
            notes.append("quota view unavailable: quota pre-check skipped")
    else:
        shortfall = _quota_problem(mutated_spec, quota, cfg)
        if shortfall is not None:
            return _denied(MSG_QUOTA, warnings=(shortfall,), has_resource=has_resource, notes=tuple(notes))

    return _allowed(patch=tuple(diff(pod, mutated)), has_resource=has_resource, notes=tuple(notes))
