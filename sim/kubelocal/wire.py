"""What kube-local's handlers read off a request and write back: JSON and ``Status`` responses, the
resource a path addresses (:class:`Target`), request bodies, ``dryRun`` and the label/field
selectors of a collection request.

Every concern (``list_watch.py``, ``writes.py``, ``deletes.py``) parses its requests with these, so
malformed input gets the same 400/415 answers whichever handler it reaches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.common.selectors import SelectorError, parse_field_selector, parse_label_selector
from sim.kubelocal import errors
from sim.kubelocal.errors import ApiError
from sim.kubelocal.pb.negotiation import REQUEST_MEDIA_TYPES, decode_protobuf_body, is_protobuf
from sim.kubelocal.resources import ResourceType
from sim.kubelocal.store import WatchFilter


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


async def decode_body(request: web.Request, *, required: bool = True) -> Any:
    """The JSON request body (400 when malformed, or empty while ``required``); None when empty. A
    protobuf body is decoded to the same JSON form (``pb/negotiation.py``)."""
    raw = await request.read()
    if raw and is_protobuf(request.content_type):
        return decode_protobuf_body(raw)
    if not raw.strip():
        if required:
            raise errors.bad_request("the request body is empty; expected a JSON object")
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc


def check_json_content(request: web.Request) -> None:
    """415 unless a body, if any, is sent as JSON or protobuf (or untyped, as some clients do)."""
    content_type = request.content_type
    if (
        request.can_read_body
        and content_type != "application/octet-stream"
        and "json" not in content_type
        and not is_protobuf(content_type)
    ):
        raise errors.unsupported_media_type(content_type, list(REQUEST_MEDIA_TYPES))


def dry_run_requested(request: web.Request) -> bool:
    """Whether the query asks for ``dryRun=All`` (the only value the apiserver accepts)."""
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid dryRun value "{value}": valid values are "All"')
    return bool(values)


def collection_filter(request: web.Request, t: Target) -> WatchFilter:
    """The objects a collection request selects: its namespace and label/field selectors (400 on
    a malformed selector or a field the resource cannot be selected by)."""
    try:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"))
    except SelectorError as exc:
        raise errors.bad_request(str(exc)) from exc
    unsupported = sorted(fields.fields - t.rt.field_selectors)
    if unsupported:
        raise errors.bad_request(f"field label not supported: {unsupported[0]}")
    return WatchFilter(t.rt, t.namespace if t.rt.namespaced else None, labels, fields)
