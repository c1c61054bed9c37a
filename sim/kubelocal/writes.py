"""kube-local's write pipeline: create (``POST``), update (``PUT``), patch (``PATCH``) and the pod
``binding`` subresource. A write runs::

    decode (400 on malformed JSON) -> default -> [mutating admission] -> prepare system fields
        -> validate (422) -> [validating admission] -> store (409 on a stale resourceVersion)

The two admission points are :class:`~sim.kubelocal.admission.AdmissionChain` calls in
:meth:`WritePipeline.create`, :meth:`WritePipeline._update_loop` and :meth:`WritePipeline.bind`
(deletes have theirs in ``deletes.py``); see ``admission.py`` for what hooks receive. Mutating
admission also calls the stored mutating admission webhooks, after the in-process hooks
(``webhooks.py``). The checks and system fields themselves are in ``object_rules.py``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain, AdmissionRequest
from sim.kubelocal.errors import ApiError, ResourceVersionConflict
from sim.kubelocal.object_rules import (
    generate_name,
    normalize_body,
    prepare_create,
    prepare_update,
    validate_object,
)
from sim.kubelocal.openapi_fields import check_unknown_fields
from sim.kubelocal.openapi_quantities import canonicalize_quantities
from sim.kubelocal.patch import (
    InvalidPatch,
    PatchConflict,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from sim.kubelocal.resources import PODS, Obj, apply_defaults
from sim.kubelocal.store import Store, meta, now_timestamp
from sim.kubelocal.webhooks import WebhookDispatcher
from sim.kubelocal.wire import (
    Target,
    check_json_content,
    decode_body,
    dry_run_requested,
    json_response,
)

PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
#: How often a read-modify-write (update, patch, delete, bind) is retried after losing a race.
MAX_UPDATE_ATTEMPTS = 10


class WritePipeline:
    """Create, update, patch and bind handlers over ``store``, with admission from ``admission``
    and the stored mutating admission webhooks."""

    def __init__(self, store: Store, admission: AdmissionChain) -> None:
        self.store = store
        self.admission = admission
        self.webhooks = WebhookDispatcher(store)

    async def _mutate(self, request: AdmissionRequest) -> Obj | None:
        """Mutating admission: the in-process hooks, then the mutating admission webhooks of the
        stored MutatingWebhookConfigurations (``webhooks.py``), in the apiserver's order."""
        obj = await self.admission.mutate(request)
        hooked = await self.webhooks.admit(dataclasses.replace(request, object=obj))
        return hooked if hooked is not None else obj

    async def create(self, request: web.Request, t: Target) -> web.Response:
        check_json_content(request)
        dry_run = dry_run_requested(request)
        body = await decode_body(request)
        check_unknown_fields(request, t.rt, body, "Create")  # kubectl's ?fieldValidation=Strict
        obj = normalize_body(t.rt, body, t.namespace, None)
        canonicalize_quantities(t.rt, obj)  # as the real server's decoding and defaulting store them
        apply_defaults(t.rt, obj)
        namespace = t.namespace or ""
        if t.rt.namespaced and not self.store.namespace_exists(namespace):
            raise errors.not_found("namespaces", namespace)  # before admission, like NamespaceLifecycle
        # MUTATING ADMISSION: the object as decoded and defaulted, before system fields.
        mutated = await self._mutate(
            AdmissionRequest(
                "CREATE", t.rt, namespace, str(meta(obj).get("name") or ""), obj, dry_run=dry_run
            )
        )
        obj = normalize_body(t.rt, mutated, t.namespace, None)
        canonicalize_quantities(t.rt, obj)
        generated = not meta(obj).get("name")
        prepare_create(t.rt, obj)
        validate_object(t.rt, obj, None)
        # VALIDATING ADMISSION: the final object as it would be stored.
        await self.admission.validate(
            AdmissionRequest("CREATE", t.rt, namespace, meta(obj)["name"], obj, dry_run=dry_run)
        )
        for _ in range(MAX_UPDATE_ATTEMPTS):
            try:
                created = self.store.create(t.rt, obj, dry_run=dry_run)
                return json_response(created, 201)
            except ApiError as exc:
                if exc.reason != "AlreadyExists" or not generated:
                    raise
                meta(obj)["name"] = generate_name(str(meta(obj)["generateName"]))
        raise errors.already_exists(t.rt.plural, meta(obj)["name"], t.rt.group)

    async def _update_loop(
        self,
        t: Target,
        make_new: Callable[[Obj], Obj],
        dry_run: bool,
    ) -> Obj:
        """Read-modify-write with optimistic concurrency, the apiserver's GuaranteedUpdate.

        ``make_new(current)`` returns the requested object; when its resourceVersion is not the
        current one the request fails with 409 (an explicit precondition went stale). A write that
        loses a race while admission hooks await is recomputed from the new state.
        """
        namespace, name = t.namespace or "", t.name or ""
        last: ResourceVersionConflict | None = None
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = self.store.get(t.rt, namespace, name)
            base_rv = str(meta(current).get("resourceVersion"))
            new = make_new(copy.deepcopy(current))
            if str(meta(new).get("resourceVersion") or base_rv) != base_rv:
                raise errors.stale(t.rt.plural, name, t.rt.group)
            canonicalize_quantities(t.rt, new)
            apply_defaults(t.rt, new)
            # MUTATING ADMISSION (UPDATE): sees the requested object and the current one.
            mutated = await self._mutate(
                AdmissionRequest("UPDATE", t.rt, namespace, name, new, current, t.subresource or "", dry_run)
            )
            new = normalize_body(t.rt, mutated, t.namespace, name)
            canonicalize_quantities(t.rt, new)
            new = prepare_update(t.rt, new, current, t.subresource)
            validate_object(t.rt, new, current)
            # VALIDATING ADMISSION (UPDATE)
            await self.admission.validate(
                AdmissionRequest("UPDATE", t.rt, namespace, name, new, current, t.subresource or "", dry_run)
            )
            try:
                return self.store.update(t.rt, new, expected_rv=base_rv, dry_run=dry_run)
            except ResourceVersionConflict as exc:
                last = exc
        assert last is not None
        raise last

    async def replace(self, request: web.Request, t: Target) -> web.Response:
        check_json_content(request)
        dry_run = dry_run_requested(request)
        body = normalize_body(t.rt, await decode_body(request), t.namespace, t.name)
        check_unknown_fields(request, t.rt, body, "Update")

        def make_new(current: Obj) -> Obj:
            new = copy.deepcopy(body)
            # An empty resourceVersion makes the update unconditional.
            if not meta(new).get("resourceVersion"):
                meta(new)["resourceVersion"] = meta(current).get("resourceVersion")
            return new

        return json_response(await self._update_loop(t, make_new, dry_run))

    async def patch(self, request: web.Request, t: Target) -> web.Response:
        content_type = request.content_type
        if content_type not in PATCH_TYPES:
            raise errors.unsupported_media_type(content_type, list(PATCH_TYPES))
        dry_run = dry_run_requested(request)
        patch = await decode_body(request)
        if content_type != "application/json-patch+json" and not isinstance(patch, dict):
            raise errors.bad_request(f"a {content_type} body must be a JSON object")

        def make_new(current: Obj) -> Obj:
            try:
                if content_type == "application/json-patch+json":
                    patched = json_patch(current, patch)
                elif content_type == "application/merge-patch+json":
                    patched = merge_patch(current, patch)
                else:
                    patched = strategic_merge_patch(current, patch)
            except InvalidPatch as exc:
                raise errors.bad_request(str(exc)) from exc
            except PatchConflict as exc:
                raise errors.unprocessable(str(exc)) from exc
            check_unknown_fields(request, t.rt, patched, "Patch", before=current)
            return normalize_body(t.rt, patched, t.namespace, t.name)

        return json_response(await self._update_loop(t, make_new, dry_run))

    async def bind(self, request: web.Request, namespace: str, pod_name: str | None) -> web.Response:
        """``POST pods/{name}/binding`` (or the legacy ``bindings`` collection): sets spec.nodeName once."""
        check_json_content(request)
        dry_run = dry_run_requested(request)
        body = await decode_body(request)
        binding = normalize_body(PODS, body, namespace, pod_name, kind="Binding")
        name = str(meta(binding).get("name") or "")
        if not name:
            raise errors.invalid("Binding", name, "metadata.name", "Required value")
        # MUTATING ADMISSION (CREATE pods/binding)
        mutated = await self._mutate(
            AdmissionRequest("CREATE", PODS, namespace, name, binding, None, "binding", dry_run)
        )
        binding = normalize_body(PODS, mutated, namespace, name, kind="Binding")
        target = binding.get("target")
        node = target.get("name") if isinstance(target, dict) else None
        if not isinstance(node, str) or not node:
            raise errors.invalid("Binding", name, "target.name", "Required value")
        if target is not None and target.get("kind") not in (None, "", "Node"):
            raise errors.invalid("Binding", name, "target.kind", 'Unsupported value: must be "Node"')
        # VALIDATING ADMISSION (CREATE pods/binding)
        await self.admission.validate(
            AdmissionRequest("CREATE", PODS, namespace, name, binding, None, "binding", dry_run)
        )
        bmd = meta(binding)
        last: ResourceVersionConflict | None = None
        for _ in range(MAX_UPDATE_ATTEMPTS):
            pod = self.store.get(PODS, namespace, name)
            pmd = meta(pod)
            if bmd.get("uid") and bmd["uid"] != pmd.get("uid"):
                raise errors.conflict(
                    "pods/binding",
                    name,
                    f"Precondition failed: UID in precondition: {bmd['uid']}, "
                    f"UID in object meta: {pmd.get('uid')}",
                )
            if bmd.get("resourceVersion") and bmd["resourceVersion"] != pmd.get("resourceVersion"):
                raise errors.conflict("pods/binding", name, errors.STALE_DETAIL)
            if pmd.get("deletionTimestamp"):
                raise errors.conflict(
                    "pods/binding", name, f"pod {name} is being deleted, cannot be assigned to a host"
                )
            bound = (pod.get("spec") or {}).get("nodeName")
            if bound:
                raise errors.conflict(
                    "pods/binding", name, f'pod {name} is already assigned to node "{bound}"'
                )
            new = copy.deepcopy(pod)
            new.setdefault("spec", {})["nodeName"] = node
            annotations = bmd.get("annotations")
            if isinstance(annotations, dict) and annotations:
                meta(new).setdefault("annotations", {}).update(annotations)
            labels = bmd.get("labels")
            if isinstance(labels, dict) and labels:
                # Kubernetes >= 1.35 copies a Binding's labels too (PodTopologyLabelsAdmission, on there).
                meta(new).setdefault("labels", {}).update(labels)
            status = new.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now_timestamp(),
                }
            )
            status["conditions"] = conditions
            try:
                self.store.update(PODS, new, expected_rv=str(pmd.get("resourceVersion")), dry_run=dry_run)
            except ResourceVersionConflict as exc:
                last = exc
                continue
            return json_response(errors.success_status("", "", code=201), 201)
        assert last is not None
        raise last
