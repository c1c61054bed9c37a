"""Server-side printing: the ``meta.k8s.io`` Table kube-local answers when a client asks for one, as
``kubectl get`` does with ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, application/json``.

A Table carries the resource's ``columnDefinitions`` (the real server's, captured into
``apidocs/table-columns.json`` by scripts/gen_kubelocal_apidocs.py) and one row per object, whose cells
``tables_cells.py`` computes, and whose ``object`` follows ``includeObject``: ``Metadata`` (the default, a
PartialObjectMetadata), ``Object`` (the whole object) or ``None`` (null). A list, a single-object GET and
a watch (one Table per event; only the first carries the column definitions, later ones ``null``) are
printed; a watch BOOKMARK becomes a Table whose row holds the bookmark's metadata, as on the real server.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.accept import media_ranges
from sim.kubelocal.apidocs_capture import COLUMNS_FILE, read_document
from sim.kubelocal.resources import Obj, ResourceType
from sim.kubelocal.tables_cells import PRINTERS, pod_row_conditions

META_GROUP: Final = "meta.k8s.io"
TABLE_VERSIONS: Final = ("v1", "v1beta1")
INCLUDE_OBJECT: Final = ("Metadata", "Object", "None")
_JSON_RANGES: Final = ("application/json", "*/*", "application/*")


@functools.cache
def _columns() -> dict[str, list[Obj]]:
    columns: dict[str, list[Obj]] = read_document(COLUMNS_FILE)
    return columns


def column_definitions(rt: ResourceType) -> list[Obj] | None:
    """The real server's column definitions for ``rt``; None for a kind kube-local cannot print."""
    if rt.key not in PRINTERS:
        return None
    return _columns().get(rt.key)


def table_version(accept: str) -> str | None:
    """The ``meta.k8s.io`` Table version the Accept header asks for before any plain JSON (``v1`` or
    ``v1beta1``); None when the client prefers the object itself."""
    for media, params in media_ranges(accept):
        if media not in _JSON_RANGES:
            continue
        wanted = params.get("as")
        if wanted is None:
            return None
        if wanted == "Table" and params.get("g") == META_GROUP and params.get("v") in TABLE_VERSIONS:
            return params["v"]
    return None


@dataclass(frozen=True)
class TableOptions:
    """What a Table request asks for: the Table's version and what each row's ``object`` holds."""

    version: str
    include_object: str = "Metadata"

    @property
    def api_version(self) -> str:
        return f"{META_GROUP}/{self.version}"


def table_options(request: web.BaseRequest, rt: ResourceType) -> TableOptions | None:
    """The Table this request asks for, or None (a plain answer: not asked, or a kind with no printer).
    400 on an ``includeObject`` the server does not know, with the real server's message."""
    version = table_version(request.headers.get("Accept", ""))
    if version is None or column_definitions(rt) is None:
        return None
    include = request.query.get("includeObject", "") or "Metadata"
    if include not in INCLUDE_OBJECT:
        raise errors.bad_request(
            f'Unable to convert to Table as requested: includeObject: Invalid value: "{include}": '
            "must be 'Metadata', 'Object', 'None', or empty"
        )
    return TableOptions(version, include)


def _partial_metadata(obj: Obj, options: TableOptions) -> Obj:
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if v is not None}
    return {"kind": "PartialObjectMetadata", "apiVersion": options.api_version, "metadata": metadata}


def _row_object(rt: ResourceType, obj: Obj, include: str, options: TableOptions) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return {"kind": rt.kind, "apiVersion": rt.api_version, **obj}
    return _partial_metadata(obj, options)


def table_row(rt: ResourceType, obj: Obj, options: TableOptions, now: dt.datetime, include: str = "") -> Obj:
    """One row: the printer's cells, the finished-pod condition where there is one, and the object."""
    row: Obj = {"cells": PRINTERS[rt.key](obj, now)}
    if rt.key == "pods":
        conditions = pod_row_conditions(obj)
        if conditions is not None:
            row["conditions"] = conditions
    row["object"] = _row_object(rt, obj, include or options.include_object, options)
    return row


def _table(rt: ResourceType, options: TableOptions, metadata: Obj, rows: list[Obj], columns: bool) -> Obj:
    return {
        "kind": "Table",
        "apiVersion": options.api_version,
        "metadata": metadata,
        "columnDefinitions": column_definitions(rt) if columns else None,
        "rows": rows,
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def list_table(rt: ResourceType, items: list[Obj], resource_version: str, options: TableOptions) -> Obj:
    """A collection as a Table (rows in the list's order)."""
    now = _now()
    rows = [table_row(rt, obj, options, now) for obj in items]
    return _table(rt, options, {"resourceVersion": resource_version}, rows, columns=True)


def object_table(rt: ResourceType, obj: Obj, options: TableOptions) -> Obj:
    """A single object as a one-row Table carrying the object's resourceVersion."""
    rv = (obj.get("metadata") or {}).get("resourceVersion", "")
    return _table(rt, options, {"resourceVersion": rv}, [table_row(rt, obj, options, _now())], columns=True)


@dataclass
class TableWatchEncoding:
    """Turns a watch stream's JSON lines into Table events, for ``kubectl get -w``. The first Table sent
    carries the column definitions; ERROR events (a Status) pass through unchanged."""

    rt: ResourceType
    options: TableOptions
    content_type: str = "application/json"
    _columns_sent: bool = False

    def frame(self, line: bytes) -> bytes:
        event = json.loads(line)
        obj = event.get("object")
        if event.get("type") == "ERROR" or not isinstance(obj, dict):
            return line
        # A BOOKMARK's row keeps its metadata whatever includeObject says: it carries the resourceVersion.
        include = "Metadata" if event.get("type") == "BOOKMARK" else ""
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        row = table_row(self.rt, obj, self.options, _now(), include)
        table = _table(self.rt, self.options, {"resourceVersion": rv}, [row], columns=not self._columns_sent)
        self._columns_sent = True
        return json.dumps({"type": event["type"], "object": table}, separators=(",", ":")).encode() + b"\n"


def table_watch_encoding(request: web.BaseRequest, rt: ResourceType) -> TableWatchEncoding | None:
    """The Table encoding of a watch whose client asked for Tables, else None."""
    options = table_options(request, rt)
    return None if options is None else TableWatchEncoding(rt, options)
