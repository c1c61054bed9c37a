"""kube-local's HTTP handlers: routing, the write pipeline, list/watch, discovery.

Paths are the apiserver's (``/api/v1/namespaces/{ns}/pods/{name}/status``, ``/api/v1/pods``,
``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``...). A write runs::

    decode (400 on malformed JSON) -> default -> [mutating admission] -> prepare system fields
        -> validate (422) -> [validating admission] -> store (409 on a stale resourceVersion)

The two admission points are :class:`~sim.kubelocal.admission.AdmissionChain` calls in
:meth:`ApiHandlers._create`, :meth:`ApiHandlers._update_loop`, :meth:`ApiHandlers._delete_one` and
:meth:`ApiHandlers._bind`; see ``admission.py`` for what hooks receive. Mutating admission also
calls the stored mutating admission webhooks, after the in-process hooks (``webhooks.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from services.common.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    validate_label_key,
    validate_label_value,
)
from sim.kubelocal import errors
from sim.kubelocal.admission import AdmissionChain, AdmissionRequest
from sim.kubelocal.errors import ApiError, ResourceVersionConflict
from sim.kubelocal.patch import (
    InvalidPatch,
    PatchConflict,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from sim.kubelocal.resources import (
    ALL_RESOURCES,
    MUTATING_WEBHOOK_CONFIGURATIONS,
    NAMESPACES,
    OBJECT_VERBS,
    PODS,
    RESOURCES,
    STATUS_VERBS,
    SYSTEM_NAMESPACES,
    Obj,
    ResourceType,
    apply_defaults,
    default_status_on_create,
    validate_name,
)
from sim.kubelocal.store import (
    Store,
    WatchClosed,
    WatchFilter,
    encode_line,
    meta,
    new_uid,
    now_timestamp,
)
from sim.kubelocal.webhook_config import validate_webhook_configuration
from sim.kubelocal.webhooks import WebhookDispatcher

log = structlog.get_logger("kube-local")

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-kube-local",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)
MAX_UPDATE_ATTEMPTS = 10
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_DISCONNECT_POLL_SECONDS = 1.0


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def status_response(exc: ApiError) -> web.Response:
    return json_response(exc.status(), exc.code)


@dataclass(frozen=True)
class Target:
    """What a resource path addresses."""

    rt: ResourceType
    namespace: str | None  # None: cluster-scoped, or a namespaced collection across namespaces
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class WatchOptions:
    default_timeout: float = 1800.0
    bookmark_interval: float = 60.0


class ApiHandlers:
    def __init__(self, store: Store, admission: AdmissionChain, watch: WatchOptions) -> None:
        self.store = store
        self.admission = admission
        self.webhooks = WebhookDispatcher(store)
        self.watch_options = watch

    async def _mutate(self, request: AdmissionRequest) -> Obj | None:
        """Mutating admission: the in-process hooks, then the mutating admission webhooks of the
        stored MutatingWebhookConfigurations (``webhooks.py``), in the apiserver's order."""
        obj = await self.admission.mutate(request)
        hooked = await self.webhooks.admit(dataclasses.replace(request, object=obj))
        return hooked if hooked is not None else obj

    # --- routing ---------------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return json_response({"paths": sorted(self._root_paths())})
        head = parts[0]
        if head in ("healthz", "readyz", "livez"):
            return web.Response(text="ok", content_type="text/plain")
        if parts == ["version"]:
            return json_response(KUBERNETES_VERSION)
        if head == "api":
            if len(parts) == 1:
                return json_response(self._api_versions(request))
            group, version, rest = "", parts[1], parts[2:]
        elif head == "apis":
            if len(parts) == 1:
                return json_response(self._group_list())
            if len(parts) == 2:
                return json_response(self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.path_not_found()
        resources = RESOURCES.get((group, version))
        if resources is None:
            raise errors.path_not_found()
        if not rest:
            return json_response(self._resource_list(group, version))
        if group == "" and len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "bindings":
            if request.method != "POST":
                raise errors.method_not_allowed()
            return await self._bind(request, rest[1], None)
        target = self._target(resources, rest)
        return await self._route(request, target)

    @staticmethod
    def _target(resources: dict[str, ResourceType], rest: list[str]) -> Target:
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and rest[2] in resources
            and resources[rest[2]].namespaced
        ):
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

    async def _route(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        if t.name is None:
            if method == "GET":
                if request.query.get("watch", "").lower() in ("true", "1"):
                    return await self._watch(request, t)
                return self._list(request, t)
            if method == "POST" and (t.namespace is not None or not t.rt.namespaced):
                return await self._create(request, t)
            if method == "DELETE" and (t.namespace is not None or not t.rt.namespaced):
                return await self._delete_collection(request, t)
            raise errors.method_not_allowed()
        namespace = t.namespace or ""
        if t.subresource == "binding":
            if method != "POST":
                raise errors.method_not_allowed()
            return await self._bind(request, namespace, t.name)
        if method == "GET":
            return json_response(self.store.get(t.rt, namespace, t.name))
        if method == "PUT":
            return await self._replace(request, t)
        if method == "PATCH":
            return await self._patch(request, t)
        if method == "DELETE" and t.subresource is None:
            return await self._delete(request, t)
        raise errors.method_not_allowed()

    # --- discovery -------------------------------------------------------------------------------

    @staticmethod
    def _root_paths() -> set[str]:
        paths = {"/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"}
        for group, version in RESOURCES:
            if group:
                paths.update({f"/apis/{group}", f"/apis/{group}/{version}"})
        return paths

    @staticmethod
    def _api_versions(request: web.Request) -> Obj:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
        }

    @staticmethod
    def _group_doc(group: str) -> Obj:
        versions = [
            {"groupVersion": f"{group}/{version}", "version": version}
            for g, version in RESOURCES
            if g == group
        ]
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    def _group_list(self) -> Obj:
        groups = sorted({g for g, _ in RESOURCES if g})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group_doc(g) for g in groups]}

    def _group(self, group: str) -> Obj:
        if not group or all(g != group for g, _ in RESOURCES):
            raise errors.path_not_found()
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group)}

    @staticmethod
    def _resource_list(group: str, version: str) -> Obj:
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
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": entries,
        }

    # --- list / watch ----------------------------------------------------------------------------

    def _filter(self, request: web.Request, t: Target) -> WatchFilter:
        try:
            labels = parse_label_selector(request.query.get("labelSelector"))
            fields = parse_field_selector(request.query.get("fieldSelector"))
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        unsupported = sorted(fields.fields - t.rt.field_selectors)
        if unsupported:
            raise errors.bad_request(f"field label not supported: {unsupported[0]}")
        return WatchFilter(t.rt, t.namespace if t.rt.namespaced else None, labels, fields)

    def _list(self, request: web.Request, t: Target) -> web.Response:
        items, rv = self.store.list_objects(self._filter(request, t))
        return json_response(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        flt = self._filter(request, t)
        query = request.query
        raw_rv = query.get("resourceVersion", "")
        send_initial = query.get("sendInitialEvents", "").lower() == "true"
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        since: int | None = None
        if raw_rv not in ("", "0") and not send_initial:
            try:
                since = int(raw_rv)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {raw_rv!r}") from exc
        timeout = self.watch_options.default_timeout
        if "timeoutSeconds" in query:
            try:
                requested = int(query["timeoutSeconds"])
            except ValueError as exc:
                raise errors.bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']!r}") from exc
            if requested > 0:
                timeout = float(requested)

        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache, private"})
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(flt, since)
        except ApiError as exc:
            # The apiserver answers 200 and streams one ERROR event (the client raises 410 from it).
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write(encode_line({"type": "ERROR", "object": exc.status()}))
                await response.write_eof()
            return response
        start_rv = self.store.resource_version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.watch_options.bookmark_interval
        initial_end_pending = send_initial and bookmarks
        try:
            await response.prepare(request)
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                if initial_end_pending and watcher.initial_drained:
                    await response.write(self._bookmark(t.rt, start_rv, initial_end=True))
                    initial_end_pending = False
                wait = min(deadline - now, _DISCONNECT_POLL_SECONDS)
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                line = await watcher.get(wait)
                if line is not None:
                    await response.write(line)
                    continue
                if request.transport is None or request.transport.is_closing():
                    break
                if bookmarks and watcher.idle and loop.time() >= next_bookmark:
                    await response.write(self._bookmark(t.rt, self.store.resource_version))
                    next_bookmark = loop.time() + self.watch_options.bookmark_interval
        except WatchClosed as closed:
            if closed.reason == "overflow":
                log.warning("closing slow watcher", path=request.path, queue_limit=watcher.limit)
        except ConnectionError:
            return response
        finally:
            self.store.unwatch(watcher)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    @staticmethod
    def _bookmark(rt: ResourceType, rv: str, *, initial_end: bool = False) -> bytes:
        md: Obj = {"resourceVersion": rv, "creationTimestamp": None}
        if initial_end:
            md["annotations"] = {"k8s.io/initial-events-end": "true"}
        return encode_line(
            {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}}
        )

    # --- decoding and checks ---------------------------------------------------------------------

    @staticmethod
    async def _decode(request: web.Request, *, required: bool = True) -> Any:
        raw = await request.read()
        if not raw.strip():
            if required:
                raise errors.bad_request("the request body is empty; expected a JSON object")
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc

    @staticmethod
    def _check_json_content(request: web.Request) -> None:
        content_type = request.content_type
        if (
            request.can_read_body
            and content_type != "application/octet-stream"
            and "json" not in content_type
        ):
            raise errors.unsupported_media_type(content_type, ["application/json"])

    @staticmethod
    def _dry_run(request: web.Request) -> bool:
        values = request.query.getall("dryRun", [])
        for value in values:
            if value != "All":
                raise errors.bad_request(f'Invalid dryRun value "{value}": valid values are "All"')
        return bool(values)

    @staticmethod
    def _normalize(
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

    @staticmethod
    def _validate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
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
            raise errors.invalid(
                rt.kind, name, "metadata.finalizers", "Invalid value: must be a list of strings"
            )
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

    @staticmethod
    def _generate_name(prefix: str) -> str:
        return prefix + "".join(random.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))

    def _prepare_create(self, rt: ResourceType, obj: Obj) -> None:
        md = meta(obj)
        if md.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not md.get("name") and md.get("generateName"):
            md["name"] = self._generate_name(str(md["generateName"]))
        md["uid"] = new_uid()
        md["creationTimestamp"] = now_timestamp()
        md.pop("deletionTimestamp", None)
        md.pop("deletionGracePeriodSeconds", None)
        if rt.tracks_generation:
            md["generation"] = 1
        else:
            md.pop("generation", None)
        default_status_on_create(rt, obj)

    @staticmethod
    def _prepare_update(rt: ResourceType, new: Obj, current: Obj, subresource: str | None) -> Obj:
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

    # --- writes ----------------------------------------------------------------------------------

    async def _create(self, request: web.Request, t: Target) -> web.Response:
        self._check_json_content(request)
        dry_run = self._dry_run(request)
        body = await self._decode(request)
        obj = self._normalize(t.rt, body, t.namespace, None)
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
        obj = self._normalize(t.rt, mutated, t.namespace, None)
        generated = not meta(obj).get("name")
        self._prepare_create(t.rt, obj)
        self._validate(t.rt, obj, None)
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
                meta(obj)["name"] = self._generate_name(str(meta(obj)["generateName"]))
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
            apply_defaults(t.rt, new)
            # MUTATING ADMISSION (UPDATE): sees the requested object and the current one.
            mutated = await self._mutate(
                AdmissionRequest("UPDATE", t.rt, namespace, name, new, current, t.subresource or "", dry_run)
            )
            new = self._normalize(t.rt, mutated, t.namespace, name)
            new = self._prepare_update(t.rt, new, current, t.subresource)
            self._validate(t.rt, new, current)
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

    async def _replace(self, request: web.Request, t: Target) -> web.Response:
        self._check_json_content(request)
        dry_run = self._dry_run(request)
        body = self._normalize(t.rt, await self._decode(request), t.namespace, t.name)

        def make_new(current: Obj) -> Obj:
            new = copy.deepcopy(body)
            # An empty resourceVersion makes the update unconditional.
            if not meta(new).get("resourceVersion"):
                meta(new)["resourceVersion"] = meta(current).get("resourceVersion")
            return new

        return json_response(await self._update_loop(t, make_new, dry_run))

    async def _patch(self, request: web.Request, t: Target) -> web.Response:
        content_type = request.content_type
        if content_type not in PATCH_TYPES:
            raise errors.unsupported_media_type(content_type, list(PATCH_TYPES))
        dry_run = self._dry_run(request)
        patch = await self._decode(request)
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
            return self._normalize(t.rt, patched, t.namespace, t.name)

        return json_response(await self._update_loop(t, make_new, dry_run))

    @staticmethod
    def _delete_preconditions(rt: ResourceType, current: Obj, options: Any) -> None:
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

    async def _delete_options(self, request: web.Request) -> tuple[Any, bool]:
        dry_run = self._dry_run(request)
        options = await self._decode(request, required=False) if request.can_read_body else None
        if isinstance(options, dict) and options.get("dryRun"):
            dry_run = True
        return options, dry_run

    async def _delete(self, request: web.Request, t: Target) -> web.Response:
        options, dry_run = await self._delete_options(request)
        obj, removed = await self._delete_one(t.rt, t.namespace or "", t.name or "", options, dry_run)
        if removed and not t.rt.return_deleted_object:
            md = meta(obj)
            return json_response(
                errors.success_status(t.rt.plural, str(md.get("name")), t.rt.group, str(md.get("uid")))
            )
        return json_response(obj)

    async def _delete_collection(self, request: web.Request, t: Target) -> web.Response:
        options, dry_run = await self._delete_options(request)
        items, _ = self.store.list_objects(self._filter(request, t))
        deleted = []
        for item in items:
            namespace, name = str(meta(item).get("namespace") or ""), str(meta(item)["name"])
            try:
                obj, _ = await self._delete_one(t.rt, namespace, name, options, dry_run)
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

    async def _delete_one(
        self, rt: ResourceType, namespace: str, name: str, options: Any, dry_run: bool
    ) -> tuple[Obj, bool]:
        """Deletes or, while finalizers remain, marks for deletion. Returns (object, removed)."""
        if rt is NAMESPACES and name in SYSTEM_NAMESPACES:
            raise errors.forbidden(rt.plural, name, "this namespace may not be deleted")
        last: ResourceVersionConflict | None = None
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = self.store.get(rt, namespace, name)
            self._delete_preconditions(rt, current, options)
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

    async def _bind(self, request: web.Request, namespace: str, pod_name: str | None) -> web.Response:
        """``POST pods/{name}/binding`` (or the legacy ``bindings`` collection): sets spec.nodeName once."""
        self._check_json_content(request)
        dry_run = self._dry_run(request)
        body = await self._decode(request)
        binding = self._normalize(PODS, body, namespace, pod_name, kind="Binding")
        name = str(meta(binding).get("name") or "")
        if not name:
            raise errors.invalid("Binding", name, "metadata.name", "Required value")
        # MUTATING ADMISSION (CREATE pods/binding)
        mutated = await self._mutate(
            AdmissionRequest("CREATE", PODS, namespace, name, binding, None, "binding", dry_run)
        )
        binding = self._normalize(PODS, mutated, namespace, name, kind="Binding")
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
