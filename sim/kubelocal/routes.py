"""kube-local's routing: turns an apiserver path into a handler call.

Paths are the apiserver's (``/api/v1/namespaces/{ns}/pods/{name}/status``, ``/api/v1/pods``,
``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``...). :func:`parse_target` finds the
resource, namespace, name and subresource a path addresses; :meth:`ApiRouter.dispatch` answers the
health, version and discovery paths itself (``discovery.py``) and sends the rest, by method, to
the list/watch (``list_watch.py``), write (``writes.py``) or delete (``deletes.py``) handlers.
"""

from __future__ import annotations

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain
from sim.kubelocal.deletes import Deletes
from sim.kubelocal.discovery import (
    KUBERNETES_VERSION,
    api_versions,
    group_document,
    group_list,
    resource_list,
    root_paths,
)
from sim.kubelocal.eviction import evict
from sim.kubelocal.list_watch import ListWatch, WatchOptions
from sim.kubelocal.openapi import openapi_response
from sim.kubelocal.resources import RESOURCES, ResourceType
from sim.kubelocal.store import Store
from sim.kubelocal.tables import object_table, table_options
from sim.kubelocal.unserved import unserved_message
from sim.kubelocal.wire import Target, json_response
from sim.kubelocal.writes import WritePipeline

# With an instance token (``kube-local --instance-token``) every health answer carries it in this header, so
# whoever started this kube-local can tell it from another server answering on the same port.
INSTANCE_HEADER = "X-Kube-Local-Instance"


def parse_target(resources: dict[str, ResourceType], rest: list[str]) -> Target:
    """The resource, namespace, name and subresource of a path after its group version (404 if none)."""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in resources and resources[rest[2]].namespaced:
        rt, namespace, tail = resources[rest[2]], rest[1], rest[3:]
    else:
        found = resources.get(rest[0])
        if found is None:
            raise errors.path_not_found()
        rt, namespace, tail = found, None, rest[1:]
        if rt.namespaced and tail:
            raise errors.path_not_found()
    if len(tail) > 2:
        raise errors.path_not_found()
    name = tail[0] if tail else None
    sub = tail[1] if len(tail) == 2 else None
    if sub is not None and sub not in rt.subresources:
        raise errors.path_not_found()
    return Target(rt, namespace, name, sub)


def _unserved(
    group: str, version: str, rest: list[str], resources: dict[str, ResourceType]
) -> errors.ApiError:
    """404 with a message saying what local mode does not serve and what to use instead, where it can."""
    message = unserved_message(group, version, rest, frozenset(resources))
    return errors.path_not_found() if message is None else errors.ApiError(404, "NotFound", message)


class ApiRouter:
    """The one aiohttp handler (:meth:`dispatch`) behind every kube-local path."""

    def __init__(
        self,
        store: Store,
        admission: AdmissionChain,
        watch: WatchOptions,
        instance_token: str | None = None,
    ) -> None:
        self.store = store
        self.health_headers = {INSTANCE_HEADER: instance_token} if instance_token else {}
        self.list_watch = ListWatch(store, watch)
        self.writes = WritePipeline(store, admission)
        self.deletes = Deletes(store, admission)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return json_response({"paths": sorted(root_paths())})
        head = parts[0]
        if head in ("healthz", "readyz", "livez"):
            return web.Response(text="ok", content_type="text/plain", headers=self.health_headers)
        if parts == ["version"]:
            return json_response(KUBERNETES_VERSION)
        if head == "openapi":
            return openapi_response(request, parts)
        if head == "api":
            if len(parts) == 1:
                return json_response(api_versions(request.host))
            group, version, rest = "", parts[1], parts[2:]
        elif head == "apis":
            if len(parts) == 1:
                return json_response(group_list())
            if len(parts) == 2:
                return json_response(group_document(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.path_not_found()
        resources = RESOURCES.get((group, version))
        if resources is None:
            raise _unserved(group, version, rest, {})
        if not rest:
            return json_response(resource_list(group, version))
        if group == "" and len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "bindings":
            if request.method != "POST":
                raise errors.method_not_allowed()
            return await self.writes.bind(request, rest[1], None)
        try:
            target = parse_target(resources, rest)
        except errors.ApiError as exc:
            if exc.code != 404:
                raise
            raise _unserved(group, version, rest, resources) from None
        return await self._route(request, target)

    async def _route(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        if t.name is None:
            if method == "GET":
                if request.query.get("watch", "").lower() in ("true", "1"):
                    return await self.list_watch.watch_collection(request, t)
                return self.list_watch.list_collection(request, t)
            if method == "POST" and (t.namespace is not None or not t.rt.namespaced):
                return await self.writes.create(request, t)
            if method == "DELETE" and (t.namespace is not None or not t.rt.namespaced):
                return await self.deletes.delete_collection(request, t)
            raise errors.method_not_allowed()
        namespace = t.namespace or ""
        if t.subresource == "binding":
            if method != "POST":
                raise errors.method_not_allowed()
            return await self.writes.bind(request, namespace, t.name)
        if t.subresource == "eviction":
            return await evict(request, t, self.deletes)
        if method == "GET":
            obj = self.store.get(t.rt, namespace, t.name)
            table = table_options(request, t.rt) if t.subresource in (None, "status") else None
            return json_response(obj if table is None else object_table(t.rt, obj, table))
        if method == "PUT":
            return await self.writes.replace(request, t)
        if method == "PATCH":
            return await self.writes.patch(request, t)
        if method == "DELETE" and t.subresource is None:
            return await self.deletes.delete(request, t)
        raise errors.method_not_allowed()
