"""What kube-local publishes about its API, taken from the real kube-apiserver: the OpenAPI v2 and v3
documents cut to the served resources (``openapi_filter.py``) and the Table column definitions the real
server prints each served resource with.

:func:`capture` reads a live server through a ``fetch(path, accept) -> bytes`` callable, so the generator
(scripts/gen_kubelocal_apidocs.py, over sim/controlplane's kube-apiserver) and the test that checks the
committed files against a live server (tests/kubelocal/test_openapi.py) run the very same code.
:func:`file_bytes` is how each captured document is stored under ``sim/kubelocal/apidocs/``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from sim.kubelocal.openapi_filter import (
    Served,
    filter_v2,
    filter_v3,
    is_group_version_document,
    v3_document_names,
)
from sim.kubelocal.resources import ALL_RESOURCES, RESOURCES

APIDOCS_DIR: Final = Path(__file__).resolve().parent / "apidocs"
V2_FILE: Final = "openapi-v2.json.gz"
COLUMNS_FILE: Final = "table-columns.json"
JSON: Final = "application/json"
TABLE_ACCEPT: Final = "application/json;as=Table;v=v1;g=meta.k8s.io"

#: (path, Accept) -> response body; raises on a non-200 answer.
Fetch = Callable[[str, str], bytes]


def v3_file(name: str) -> str:
    """The file holding the ``/openapi/v3/<name>`` document (``api/v1``: ``openapi-v3--api--v1.json.gz``)."""
    return "openapi-v3--" + name.replace("/", "--") + ".json.gz"


def collection_path(group: str, version: str, plural: str) -> str:
    prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    return f"{prefix}/{plural}"


def capture_columns(fetch: Fetch) -> dict[str, list[dict[str, Any]]]:
    """Each served resource's Table columnDefinitions as the real server gives them, by resource key."""
    columns: dict[str, list[dict[str, Any]]] = {}
    for rt in ALL_RESOURCES:
        path = collection_path(rt.group, rt.version, rt.plural) + "?limit=1&includeObject=None"
        table = json.loads(fetch(path, TABLE_ACCEPT))
        if table.get("kind") != "Table":
            raise ValueError(f"{path} did not answer a Table: kind {table.get('kind')!r}")
        columns[rt.key] = table["columnDefinitions"]
    return columns


def capture(fetch: Fetch, served: Served = RESOURCES) -> dict[str, Any]:
    """Every document kube-local publishes, parsed, by its file name under ``apidocs/``."""
    documents: dict[str, Any] = {V2_FILE: filter_v2(json.loads(fetch("/openapi/v2", JSON)), served)}
    index = json.loads(fetch("/openapi/v3", JSON))["paths"]
    for name in v3_document_names(served):
        if name not in index:
            raise ValueError(f"the server publishes no /openapi/v3/{name} document")
        document = json.loads(fetch(f"/openapi/v3/{name}", JSON))
        documents[v3_file(name)] = (
            filter_v3(document, served) if is_group_version_document(name) else document
        )
    documents[COLUMNS_FILE] = capture_columns(fetch)
    return documents


def file_bytes(name: str, document: Any) -> bytes:
    """A document as committed: compact JSON, gzip'd with no timestamp (so regenerating is reproducible);
    the column file stays plain, indented JSON, small enough to read in a diff."""
    if name.endswith(".gz"):
        raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        return gzip.compress(raw, compresslevel=9, mtime=0)
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()


def read_document(name: str, directory: Path = APIDOCS_DIR) -> Any:
    """A committed document, parsed."""
    raw = (directory / name).read_bytes()
    return json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
