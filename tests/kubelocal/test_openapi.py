"""kube-local's OpenAPI documents (sim/kubelocal/openapi.py): the committed files are the real
kube-apiserver's documents cut to what kube-local serves (checked against the live server, so they cannot
drift), kube-local publishes them the way the real server does (index with content hashes, ETag, cache
headers), and every path they describe is one kube-local routes."""

from __future__ import annotations

import gzip
import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from sim.kubelocal import errors
from sim.kubelocal.apidocs_capture import APIDOCS_DIR, COLUMNS_FILE, V2_FILE, capture, read_document, v3_file
from sim.kubelocal.openapi_filter import (
    is_group_version_document,
    path_served,
    v3_document_names,
)
from sim.kubelocal.resources import RESOURCES
from sim.kubelocal.routes import parse_target
from sim.kubelocal.server import KubeLocalThread
from tests.kubelocal.conftest import Served
from tests.kubelocal.real_access import admin_tls
from tests.support.apiservers import ApiServer

REGENERATE = "run `.venv/bin/python scripts/gen_kubelocal_apidocs.py` and commit sim/kubelocal/apidocs/"
GNOSTIC_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def fetch(url: str, path: str, accept: str = "application/json", tls: Any = None, **headers: str) -> Any:
    """(status, headers, body bytes) of a GET."""
    request = urllib.request.Request(url + path, headers={"Accept": accept, **headers})
    try:
        with urllib.request.urlopen(request, timeout=30, context=tls) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_committed_documents_are_what_the_real_server_serves(real_api_server: ApiServer) -> None:
    tls = admin_tls(real_api_server)

    def live(path: str, accept: str) -> bytes:
        status, _, body = fetch(real_api_server.url, path, accept, tls)
        assert status == 200, f"{path}: {status}"
        return bytes(body)

    documents = capture(live)
    committed = {path.name for path in APIDOCS_DIR.iterdir()}
    assert committed == set(documents), f"the files under apidocs/ are not the generated set: {REGENERATE}"
    stale = [name for name, document in documents.items() if read_document(name) != document]
    assert not stale, f"{stale} differ from the live kube-apiserver: {REGENERATE}"


def test_committed_files_are_compressed_and_small() -> None:
    total = sum(path.stat().st_size for path in APIDOCS_DIR.iterdir())
    assert total < 400_000, f"apidocs/ holds {total} bytes: is the filter keeping unserved resources?"
    for path in APIDOCS_DIR.iterdir():
        if path.name != COLUMNS_FILE:
            assert path.name.endswith(".json.gz") and gzip.decompress(path.read_bytes())


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/api/v1/", True),
        ("/api/v1/pods", True),
        ("/api/v1/namespaces/{namespace}/pods", True),
        ("/api/v1/namespaces/{namespace}/pods/{name}", True),
        ("/api/v1/namespaces/{namespace}/pods/{name}/status", True),
        ("/api/v1/namespaces/{namespace}/pods/{name}/binding", True),
        ("/api/v1/namespaces/{namespace}/bindings", True),
        ("/api/v1/namespaces/{namespace}/pods/{name}/log", False),
        ("/api/v1/namespaces/{namespace}/pods/{name}/exec", False),
        ("/api/v1/namespaces/{namespace}/pods/{name}/proxy/{path}", False),
        ("/api/v1/watch/namespaces/{namespace}/pods", False),
        ("/api/v1/namespaces/{namespace}/configmaps", False),
        ("/api/v1/namespaces/{name}", True),
        ("/api/v1/namespaces/{name}/status", True),
        ("/api/v1/namespaces/{name}/finalize", False),
        ("/api/v1/nodes/{name}/proxy", False),
        ("/api/v1/namespaces/{namespace}/nodes", False),
        ("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", True),
        ("/apis/coordination.k8s.io/v1/leases", True),
        ("/apis/coordination.k8s.io/v1beta1/leases", False),
        ("/apis/apps/v1/deployments", False),
        ("/version/", False),
    ],
)
def test_path_served(path: str, served: bool) -> None:
    assert path_served(path, RESOURCES) is served


@pytest.mark.parametrize("name", [n for n in v3_document_names(RESOURCES) if is_group_version_document(n)])
def test_every_published_path_is_one_kube_local_routes(name: str) -> None:
    """The filter and the router agree: each path of a published document reaches a handler."""
    document = read_document(v3_file(name))
    assert document["paths"], name
    for template in document["paths"]:
        concrete = template.replace("{namespace}", "default").replace("{name}", "x")
        parts = [p for p in concrete.split("/") if p]
        group_version, rest = (
            (("", parts[1]), parts[2:]) if parts[0] == "api" else ((parts[1], parts[2]), parts[3:])
        )
        if not rest or rest == ["namespaces", "default", "bindings"]:
            continue  # the resource list and bindings: answered by the router itself
        try:
            parse_target(RESOURCES[group_version], rest)
        except errors.ApiError as exc:
            pytest.fail(f"{template} is published but kube-local answers {exc.code}")


def test_published_schemas_describe_the_served_kinds() -> None:
    schemas = read_document(v3_file("api/v1"))["components"]["schemas"]
    kinds = {
        (gvk["group"], gvk["version"], gvk["kind"])
        for schema in schemas.values()
        for gvk in schema.get("x-kubernetes-group-version-kind", [])
    }
    for rt in (rt for resources in RESOURCES.values() for rt in resources.values() if rt.group == ""):
        assert ("", rt.version, rt.kind) in kinds, rt.kind
    assert "io.k8s.api.apps.v1.Deployment" not in schemas
    assert "io.k8s.api.core.v1.Pod" in read_document(V2_FILE)["definitions"]


# ----- serving, on both servers: what kubectl relies on


def test_v3_index_points_at_hashed_documents(served: Served) -> None:
    status, headers, body = fetch(served.url, "/openapi/v3", tls=served.tls)
    assert status == 200
    index = json.loads(body)["paths"]
    for name in ("api/v1", "apis/coordination.k8s.io/v1", "apis/admissionregistration.k8s.io/v1"):
        url = index[name]["serverRelativeURL"]
        assert url.startswith(f"/openapi/v3/{name}?hash=")
        status, headers, document = fetch(served.url, url, tls=served.tls)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        digest = url.split("hash=", 1)[1]
        assert headers["ETag"] == f'"{digest}"'
        assert headers["Cache-Control"] == "public, immutable"
        assert hashlib.sha512(document).hexdigest().upper() == digest
        assert json.loads(document)["openapi"].startswith("3.")
    status, headers, _ = fetch(served.url, "/openapi/v3/api/v1", tls=served.tls)
    assert (status, headers["Cache-Control"]) == (200, "no-cache, private")


def test_v3_pod_patch_advertises_field_validation(served: Served) -> None:
    """kubectl apply checks this parameter to decide on server-side field validation."""
    status, _, body = fetch(served.url, "/openapi/v3/api/v1", tls=served.tls)
    assert status == 200
    patch = json.loads(body)["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert "fieldValidation" in {parameter["name"] for parameter in patch["parameters"]}


def test_v2_document(served: Served) -> None:
    status, headers, body = fetch(served.url, "/openapi/v2", tls=served.tls)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    document = json.loads(body)
    assert document["swagger"] == "2.0" and "/api/v1/namespaces/{namespace}/pods" in document["paths"]
    status, _, _ = fetch(served.url, "/openapi/v2", tls=served.tls, **{"If-None-Match": headers["ETag"]})
    assert status == 304


# ----- kube-local only


def test_kube_local_serves_the_committed_documents(kube_local: KubeLocalThread) -> None:
    status, _, body = fetch(kube_local.url, "/openapi/v3")
    assert status == 200
    index = json.loads(body)["paths"]
    assert sorted(index) == v3_document_names(RESOURCES)
    for name, entry in index.items():
        status, _, document = fetch(kube_local.url, entry["serverRelativeURL"])
        assert status == 200 and json.loads(document) == read_document(v3_file(name)), name
    status, _, body = fetch(kube_local.url, "/openapi/v2")
    assert status == 200 and json.loads(body) == read_document(V2_FILE)
    status, _, body = fetch(kube_local.url, "/")
    assert {"/openapi/v2", "/openapi/v3"} <= set(json.loads(body)["paths"])


def test_kube_local_refuses_what_it_cannot_publish(kube_local: KubeLocalThread) -> None:
    status, _, body = fetch(kube_local.url, "/openapi/v2", GNOSTIC_V2)
    assert status == 406 and json.loads(body)["reason"] == "NotAcceptable"
    status, _, body = fetch(kube_local.url, "/openapi/v2", f"{GNOSTIC_V2}, application/json")
    assert status == 200 and json.loads(body)["swagger"] == "2.0"
    status, _, _ = fetch(kube_local.url, "/openapi/v3/apis/apps/v1")
    assert status == 404
    status, _, _ = fetch(kube_local.url, "/openapi/v4")
    assert status == 404
