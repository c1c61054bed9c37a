"""The rules kube-local holds a written object to, apart from admission: the body must match the
URL it was sent to (:func:`normalize_body`), must be valid (:func:`validate_object`, 422), and the
server owns its system fields (:func:`prepare_create`, :func:`prepare_update`).
"""

from __future__ import annotations

import copy
import random
from typing import Any

from services.common.selectors import SelectorError, validate_label_key, validate_label_value
from sim.kubelocal import errors
from sim.kubelocal.ephemeral import ephemeral_containers_update
from sim.kubelocal.resources import (
    MUTATING_WEBHOOK_CONFIGURATIONS,
    NAMESPACES,
    PODS,
    Obj,
    ResourceType,
    default_status_on_create,
    validate_name,
)
from sim.kubelocal.store import meta, new_uid, now_timestamp
from sim.kubelocal.webhook_config import validate_webhook_configuration

_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def normalize_body(
    rt: ResourceType, body: Any, namespace: str | None, name: str | None, kind: str = ""
) -> Obj:
    """Checks kind/apiVersion/namespace/name of a request body against the URL and fills them in."""
    expected_kind = kind or rt.kind
    if not isinstance(body, dict):
        raise errors.bad_request(f"the request body must be a JSON object (a {expected_kind})")
    obj: Obj = body
    if obj.get("kind") not in (None, "", expected_kind):
        raise errors.bad_request(
            f"the kind in the data ({obj.get('kind')}) does not match the expected kind ({expected_kind})"
        )
    if obj.get("apiVersion") not in (None, "", rt.api_version) and not kind:
        raise errors.bad_request(
            f"the API version in the data ({obj.get('apiVersion')}) does not match "
            f"the expected API version ({rt.api_version})"
        )
    obj["kind"] = expected_kind
    obj["apiVersion"] = obj.get("apiVersion") or rt.api_version
    md = obj.get("metadata")
    if md is None:
        md = obj["metadata"] = {}
    if not isinstance(md, dict):
        raise errors.bad_request("metadata must be a JSON object")
    if rt.namespaced:
        if md.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        md["namespace"] = namespace
    else:
        md.pop("namespace", None)
    if name is not None:
        if md.get("name") not in (None, "", name):
            raise errors.bad_request(
                f"the name of the object ({md.get('name')}) does not match the name on the URL ({name})"
            )
        md["name"] = name
    return obj


def validate_object(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    md = meta(obj)
    name = str(md.get("name") or "")
    if not name:
        raise errors.invalid(
            rt.kind, name, "metadata.name", "Required value: name or generateName is required"
        )
    problem = validate_name(rt, name)
    if problem:
        raise errors.invalid(rt.kind, name, "metadata.name", f'Invalid value: "{name}": {problem}')
    for field in ("labels", "annotations"):
        values = md.get(field)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise errors.invalid(
                rt.kind, name, f"metadata.{field}", "Invalid value: must be a map of strings"
            )
        try:
            for key, value in values.items():
                validate_label_key(key)
                if field == "labels":
                    validate_label_value(value)
        except SelectorError as exc:
            raise errors.invalid(rt.kind, name, f"metadata.{field}", f"Invalid value: {exc}") from exc
    finalizers = md.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
    ):
        raise errors.invalid(rt.kind, name, "metadata.finalizers", "Invalid value: must be a list of strings")
    if rt is MUTATING_WEBHOOK_CONFIGURATIONS:
        validate_webhook_configuration(obj)
    if rt is PODS:
        spec = obj.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list) or not containers:
            raise errors.invalid(rt.kind, name, "spec.containers", "Required value")
        for i, container in enumerate(containers):
            if not isinstance(container, dict) or not container.get("name"):
                raise errors.invalid(rt.kind, name, f"spec.containers[{i}].name", "Required value")
            if not container.get("image"):
                raise errors.invalid(rt.kind, name, f"spec.containers[{i}].image", "Required value")
        if old is not None and (old.get("spec") or {}).get("nodeName") != (spec or {}).get("nodeName"):
            raise errors.invalid(
                rt.kind,
                name,
                "spec",
                "Forbidden: pod updates may not change spec.nodeName (use the binding subresource)",
            )


def generate_name(prefix: str) -> str:
    return prefix + "".join(random.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))


def prepare_create(rt: ResourceType, obj: Obj) -> None:
    md = meta(obj)
    if md.get("resourceVersion"):
        raise errors.bad_request("resourceVersion should not be set on objects to be created")
    if not md.get("name") and md.get("generateName"):
        md["name"] = generate_name(str(md["generateName"]))
    md["uid"] = new_uid()
    md["creationTimestamp"] = now_timestamp()
    md.pop("deletionTimestamp", None)
    md.pop("deletionGracePeriodSeconds", None)
    if rt.tracks_generation:
        md["generation"] = 1
    else:
        md.pop("generation", None)
    default_status_on_create(rt, obj)


def prepare_update(rt: ResourceType, new: Obj, current: Obj, subresource: str | None) -> Obj:
    """Keeps what a write may not change: system metadata, status on the main resource, and
    everything but status (and labels/annotations) on the status subresource."""
    nm, cm = meta(new), meta(current)
    name = str(cm.get("name"))
    if nm.get("uid") and nm["uid"] != cm.get("uid"):
        raise errors.conflict(
            rt.plural,
            name,
            f"Precondition failed: UID in precondition: {nm['uid']}, UID in object meta: {cm.get('uid')}",
            rt.group,
        )
    if subresource == "ephemeralcontainers":
        return ephemeral_containers_update(new, current)
    if subresource == "status":
        result = copy.deepcopy(current)
        result["status"] = new.get("status") if new.get("status") is not None else {}
        rm = meta(result)
        for field in ("labels", "annotations"):
            if nm.get(field) is not None:
                rm[field] = nm[field]
            else:
                rm.pop(field, None)
        return result
    result = new
    if rt.status_subresource:
        if "status" in current:
            result["status"] = copy.deepcopy(current["status"])
        else:
            result.pop("status", None)
    rm = meta(result)
    for field in (
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ):
        if field in cm:
            rm[field] = cm[field]
        else:
            rm.pop(field, None)
    if rt.tracks_generation and new.get("spec") != current.get("spec"):
        rm["generation"] = int(cm.get("generation") or 1) + 1
    if rt is NAMESPACES:
        labels = rm.get("labels")
        rm["labels"] = {
            **(labels if isinstance(labels, dict) else {}),
            "kubernetes.io/metadata.name": name,
        }
    return result
