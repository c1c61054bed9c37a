"""kube-local's deletes: ``DELETE`` of one object and of a collection (``deleteCollection``).

An object with finalizers is not removed but marked (``deletionTimestamp``) and stays until a write
clears its finalizers; deleting a namespace removes everything in it. Each delete passes validating
admission (``DELETE``, the object being deleted as ``old_object``) and honours ``preconditions``
(uid, resourceVersion) and ``dryRun`` from the query or the ``DeleteOptions`` body.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain, AdmissionRequest
from sim.kubelocal.errors import ApiError, ResourceVersionConflict
from sim.kubelocal.resources import NAMESPACES, SYSTEM_NAMESPACES, Obj, ResourceType
from sim.kubelocal.store import Store, meta, now_timestamp
from sim.kubelocal.wire import (
    Target,
    collection_filter,
    decode_body,
    dry_run_requested,
    json_response,
)
from sim.kubelocal.writes import MAX_UPDATE_ATTEMPTS


def check_delete_preconditions(rt: ResourceType, current: Obj, options: Any) -> None:
    """409 when ``DeleteOptions.preconditions`` (uid, resourceVersion) do not match ``current``."""
    if not isinstance(options, dict):
        return
    pre = options.get("preconditions")
    if not isinstance(pre, dict):
        return
    md = meta(current)
    name = str(md.get("name"))
    uid, rv = pre.get("uid"), pre.get("resourceVersion")
    if uid and uid != md.get("uid"):
        raise errors.conflict(
            rt.plural,
            name,
            f"Precondition failed: UID in precondition: {uid}, UID in object meta: {md.get('uid')}",
            rt.group,
        )
    if rv and rv != md.get("resourceVersion"):
        raise errors.conflict(
            rt.plural,
            name,
            f"Precondition failed: ResourceVersion in precondition: {rv}, "
            f"ResourceVersion in object meta: {md.get('resourceVersion')}",
            rt.group,
        )


class Deletes:
    """Delete handlers over ``store``, with validating admission from ``admission``."""

    def __init__(self, store: Store, admission: AdmissionChain) -> None:
        self.store = store
        self.admission = admission

    async def _delete_options(self, request: web.Request) -> tuple[Any, bool]:
        dry_run = dry_run_requested(request)
        options = await decode_body(request, required=False) if request.can_read_body else None
        if isinstance(options, dict) and options.get("dryRun"):
            dry_run = True
        return options, dry_run

    async def delete(self, request: web.Request, t: Target) -> web.Response:
        options, dry_run = await self._delete_options(request)
        obj, removed = await self.delete_one(t.rt, t.namespace or "", t.name or "", options, dry_run)
        if removed and not t.rt.return_deleted_object:
            md = meta(obj)
            return json_response(
                errors.success_status(t.rt.plural, str(md.get("name")), t.rt.group, str(md.get("uid")))
            )
        return json_response(obj)

    async def delete_collection(self, request: web.Request, t: Target) -> web.Response:
        options, dry_run = await self._delete_options(request)
        items, _ = self.store.list_objects(collection_filter(request, t))
        deleted = []
        for item in items:
            namespace, name = str(meta(item).get("namespace") or ""), str(meta(item)["name"])
            try:
                obj, _ = await self.delete_one(t.rt, namespace, name, options, dry_run)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                continue
            deleted.append(obj)
        return json_response(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": {"resourceVersion": self.store.resource_version},
                "items": deleted,
            }
        )

    async def delete_one(
        self, rt: ResourceType, namespace: str, name: str, options: Any, dry_run: bool
    ) -> tuple[Obj, bool]:
        """Deletes or, while finalizers remain, marks for deletion. Returns (object, removed)."""
        if rt is NAMESPACES and name in SYSTEM_NAMESPACES:
            raise errors.forbidden(rt.plural, name, "this namespace may not be deleted")
        last: ResourceVersionConflict | None = None
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = self.store.get(rt, namespace, name)
            check_delete_preconditions(rt, current, options)
            # VALIDATING ADMISSION (DELETE): old_object is the object being deleted.
            await self.admission.validate(
                AdmissionRequest("DELETE", rt, namespace, name, None, current, "", dry_run)
            )
            rv = str(meta(current).get("resourceVersion"))
            try:
                if meta(current).get("finalizers"):
                    if meta(current).get("deletionTimestamp"):
                        return current, False
                    marked = copy.deepcopy(current)
                    meta(marked)["deletionTimestamp"] = now_timestamp()
                    meta(marked)["deletionGracePeriodSeconds"] = 0
                    return self.store.update(rt, marked, expected_rv=rv, dry_run=dry_run), False
                if rt is NAMESPACES and not dry_run:
                    for child_rt, child in self.store.namespaced_objects(name):
                        self.store.delete(child_rt, name, str(meta(child)["name"]), expected_rv=None)
                return self.store.delete(rt, namespace, name, expected_rv=rv, dry_run=dry_run), True
            except ResourceVersionConflict as exc:
                last = exc
        assert last is not None
        raise last
