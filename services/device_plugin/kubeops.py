"""The device plugin's Kubernetes calls: blocking official-client calls, run in worker threads.

Every read is raw JSON (`_preload_content=False`); every write is a JSON merge patch, as HAMi's plugin
does, with `metadata.resourceVersion` when the write must not race another writer (node lock release, the
to-allocate annotation).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common import wire
from services.common.codecs import WireFormatError, parse_node_lock
from services.common.kube import KUBE_ERRORS, raw_json
from services.common.log import get_logger

log = get_logger("device_plugin.kube")

MERGE_PATCH = "application/merge-patch+json"
Obj = dict[str, Any]

# What a failed API call raises: an HTTP error answer, or no answer at all.


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return dict(annotations) if isinstance(annotations, Mapping) else {}


def resource_version_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _annotation_patch(annotations: Mapping[str, str | None], resource_version: str | None) -> Obj:
    """Merge-patch metadata; a resourceVersion makes it conditional (409 when the object moved on)."""
    meta: Obj = {"annotations": dict(annotations)}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return meta


class KubeOps:
    """Thin async facade over CoreV1Api for what the plugin reads and writes."""

    def __init__(self, api: client.ApiClient) -> None:
        # Typed as Any: raw responses (`_preload_content=False`) are urllib3 responses, not the models the
        # client's annotations promise, and merge-patch bodies are plain dicts.
        self._core: Any = client.CoreV1Api(api)

    # --- reads ---------------------------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Obj:
        """One blocking client call, off the event loop, answered as plain JSON."""
        call = getattr(self._core, method)
        data: Obj = await asyncio.to_thread(raw_json, call, *args, _request_timeout=30, **kwargs)
        return data

    async def get_node(self, name: str) -> Obj:
        return await self._call("read_node", name)

    async def get_pod(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._call("read_namespaced_pod", name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def pods_on_node(self, node: str) -> list[Obj]:
        listing = await self._call("list_pod_for_all_namespaces", field_selector=f"spec.nodeName={node}")
        items: list[Obj] = listing.get("items") or []
        return items

    # --- writes --------------------------------------------------------------------------------------------

    async def patch_pod_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        resource_version: str | None = None,
    ) -> Obj:
        body = {"metadata": _annotation_patch(annotations, resource_version)}
        return await self._call("patch_namespaced_pod", name, namespace, body, _content_type=MERGE_PATCH)

    async def patch_node_annotations(
        self, name: str, annotations: Mapping[str, str | None], resource_version: str | None = None
    ) -> Obj:
        body = {"metadata": _annotation_patch(annotations, resource_version)}
        return await self._call("patch_node", name, body, _content_type=MERGE_PATCH)

    async def patch_node_status(self, name: str, status: Obj) -> Obj:
        return await self._call("patch_node_status", name, {"status": status}, _content_type=MERGE_PATCH)

    # --- node lock -------------------------------------------------------------------------------

    async def release_node_lock(
        self, node: str, namespace: str, name: str, *, attempts: int = 5, base_delay: float = 0.1
    ) -> bool:
        """Remove `hami.io/mutex.lock` if `namespace/name` holds it (or it is the legacy ownerless form).

        True when the lock is gone afterwards (released now, or not there); False when another pod holds
        it. Conflicts and transient errors are retried with backoff (docs/hami-wire.md#node-lock: 5 steps, 100
        ms, x2).
        """
        delay = base_delay
        for attempt in range(1, attempts + 1):
            try:
                current = await self.get_node(node)
                value = annotations_of(current).get(wire.NODE_LOCK)
                if value is None:
                    return True
                try:
                    lock = parse_node_lock(value)
                except WireFormatError as exc:
                    log.error("node_lock_malformed", node=node, value=value, error=str(exc))
                    return False
                if not lock.is_legacy and not lock.held_by(namespace, name):
                    log.info("node_lock_held_by_other", node=node, pod=f"{namespace}/{name}", holder=value)
                    return False
                await self.patch_node_annotations(
                    node, {wire.NODE_LOCK: None}, resource_version=resource_version_of(current)
                )
                held = (datetime.now(UTC) - lock.acquired_at).total_seconds()
                log.info("node_lock_released", node=node, pod=f"{namespace}/{name}", held_s=round(held, 3))
                return True
            except KUBE_ERRORS as exc:
                if attempt == attempts:
                    raise
                log.debug("node_lock_release_retry", node=node, attempt=attempt, error=str(exc))
                await asyncio.sleep(delay * (1 + random.random() * 0.5))
                delay *= 2
        return False
