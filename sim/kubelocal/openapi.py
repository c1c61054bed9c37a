"""kube-local's ``/openapi/v2`` and ``/openapi/v3`` endpoints: the real kube-apiserver's documents for the
resources kube-local serves (committed under ``apidocs/``, see apidocs_capture.py), answered the way the
real server answers them.

``/openapi/v3`` is the index kubectl reads first (``apply``, ``edit``, ``explain`` and the check for
server-side field validation): each document's ``serverRelativeURL`` carries its content hash, and a
request with ``?hash=`` may be cached for good (``Cache-Control: public, immutable``), as on the real
server. Only the JSON forms are served: kubectl asks for the v3 documents in JSON and falls back to v2's
protobuf only when v3 is missing; a client that accepts nothing but the gnostic protobuf form gets 406
(docs/kubelocal-differences.md#openapi).
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from sim.kubelocal import errors
from sim.kubelocal.apidocs_capture import APIDOCS_DIR, V2_FILE, v3_file
from sim.kubelocal.openapi_filter import v3_document_names
from sim.kubelocal.resources import RESOURCES

JSON: Final = "application/json"
#: Media types a client may accept for an OpenAPI document and get JSON.
_JSON_RANGES: Final = frozenset({JSON, "*/*", "application/*"})
_IMMUTABLE_FOR: Final = dt.timedelta(days=365)


@dataclass(frozen=True)
class Document:
    """One published document: its JSON bytes and their hash (upper-case hex SHA-512, as the real server's
    ETag and ``?hash=`` carry)."""

    body: bytes

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha512(self.body).hexdigest().upper()


def _load(name: str) -> Document:
    # Re-encoded compactly: the committed file's JSON is parsed once, so the bytes do not depend on it.
    document = json.loads(gzip.decompress((APIDOCS_DIR / name).read_bytes()))
    return Document(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


@functools.cache
def v2_document() -> Document:
    return _load(V2_FILE)


@functools.cache
def v3_documents() -> dict[str, Document]:
    return {name: _load(v3_file(name)) for name in v3_document_names(RESOURCES)}


def v3_index() -> dict[str, object]:
    paths = {
        name: {"serverRelativeURL": f"/openapi/v3/{name}?hash={document.digest}"}
        for name, document in v3_documents().items()
    }
    return {"paths": paths}


def accepts_json(accept: str) -> bool:
    """Whether an Accept header allows a JSON answer (an empty header does)."""
    if not accept.strip():
        return True
    return any(clause.split(";", 1)[0].strip().lower() in _JSON_RANGES for clause in accept.split(","))


def _not_acceptable() -> errors.ApiError:
    return errors.ApiError(
        406, "NotAcceptable", f"only the following media types are accepted: {JSON} (kube-local's OpenAPI)"
    )


def _document_response(request: web.Request, document: Document) -> web.Response:
    if not accepts_json(request.headers.get("Accept", "")):
        raise _not_acceptable()
    etag = f'"{document.digest}"'
    headers = {"ETag": etag, "Vary": "Accept"}
    if "hash" in request.query:
        expires = dt.datetime.now(dt.UTC) + _IMMUTABLE_FOR
        headers.update(
            {"Cache-Control": "public, immutable", "Expires": expires.strftime("%a, %d %b %Y %H:%M:%S UTC")}
        )
    else:
        headers["Cache-Control"] = "no-cache, private"
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=document.body, headers=headers, content_type=JSON)


def openapi_response(request: web.Request, parts: list[str]) -> web.Response:
    """The answer to ``/openapi/...`` (``parts``: the path's segments, ``openapi`` first); 404 for a
    document kube-local does not publish, 405 for anything but GET."""
    if request.method not in ("GET", "HEAD"):
        raise errors.method_not_allowed()
    if parts == ["openapi", "v2"]:
        return _document_response(request, v2_document())
    if parts == ["openapi", "v3"]:
        body = json.dumps(v3_index(), separators=(",", ":")).encode()
        # The real server labels this index text/plain; kubectl reads it either way.
        return web.Response(body=body, content_type="text/plain", charset="utf-8")
    if len(parts) > 2 and parts[:2] == ["openapi", "v3"]:
        document = v3_documents().get("/".join(parts[2:]))
        if document is not None:
            return _document_response(request, document)
    raise errors.path_not_found()
