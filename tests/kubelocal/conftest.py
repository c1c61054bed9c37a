"""Fixtures: the API server a conformance test talks to, and official-client handles onto it.

A test that asserts Kubernetes API behaviour runs twice, on a fresh kube-local and on the upstream
kube-apiserver (the session's `real_api_server` of tests/conftest.py, emptied after each test), so the two
cannot drift apart unnoticed (`server_kind` is "kube-local" or "real"). A test that reaches kube-local
itself (`kube_local`, `server_factory`: its options, admission chain, watcher table) or carries the
`kube_local_only` mark runs on kube-local alone."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from services.common.config import KubeAccess
from services.common.kube import new_api_client
from sim.kubelocal.server import KubeLocalThread
from tests.kubelocal.real_access import admin_tls
from tests.support.apiservers import ApiServer, reset_real

SERVER_KINDS = ("kube-local", "real")
# Fixtures that reach into kube-local itself: a test using one cannot run on the upstream server.
KUBE_LOCAL_FIXTURES = frozenset({"kube_local", "server_factory"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kube_local_only: asserts kube-local behaviour the upstream kube-apiserver does not share"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_kind" not in metafunc.fixturenames:
        return
    only_local = bool(KUBE_LOCAL_FIXTURES & set(metafunc.fixturenames)) or (
        metafunc.definition.get_closest_marker("kube_local_only") is not None
    )
    kinds = ["kube-local"] if only_local else list(SERVER_KINDS)
    metafunc.parametrize("server_kind", kinds, ids=kinds)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A `kube_local_only` mark on one parameter set (pytest.param(..., marks=...)) is only visible on the
    collected item: drop that item's run on the real server."""
    dropped = [
        item
        for item in items
        if item.get_closest_marker("kube_local_only") is not None
        and getattr(getattr(item, "callspec", None), "params", {}).get("server_kind") == "real"
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@dataclass
class Served:
    """The server under test: its URL, how the official client reaches it, and the TLS context (admin
    client certificate, our CA) a raw request needs on the real server (None: kube-local, plain HTTP)."""

    kind: str
    url: str
    access: KubeAccess
    tls: ssl.SSLContext | None = None


def make_client(url: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


def pod_body(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node: str | None = None,
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations),
        spec=client.V1PodSpec(
            node_name=node, containers=[client.V1Container(name="main", image="busybox:1.36")]
        ),
    )


def raw_request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    tls: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """A plain urllib request; returns (status, decoded JSON body or text). `tls` carries the real
    server's admin credentials."""
    req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10, context=tls) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., KubeLocalThread]]:
    """Starts kube-locals with the given KubeLocal options; all are closed after the test."""
    started: list[KubeLocalThread] = []

    def start(**options: Any) -> KubeLocalThread:
        server = KubeLocalThread(**options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.close()


@pytest.fixture
def kube_local(server_factory: Callable[..., KubeLocalThread]) -> KubeLocalThread:
    return server_factory()


@pytest.fixture
def server_kind() -> str:
    """Parametrised by pytest_generate_tests above."""
    return "kube-local"


@pytest.fixture
def served(server_kind: str, request: pytest.FixtureRequest) -> Iterator[Served]:
    """This test's server: a fresh kube-local, or the session's upstream kube-apiserver, emptied of what
    the test made (pods, nodes, leases, quotas, events, webhook configurations, namespaces) when it ends."""
    if server_kind == "kube-local":
        local: KubeLocalThread = request.getfixturevalue("kube_local")
        yield Served("kube-local", local.url, KubeAccess(server=local.url))
        return
    real: ApiServer = request.getfixturevalue("real_api_server")
    try:
        yield Served("real", real.url, real.admin, admin_tls(real))
    finally:
        reset_real(real)


@pytest.fixture
def url(served: Served) -> str:
    return served.url


@pytest.fixture
def api_client(served: Served) -> Iterator[client.ApiClient]:
    api = new_api_client(served.access)
    yield api
    api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def coordination(api_client: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client)


@pytest.fixture
def new_pod() -> Callable[..., client.V1Pod]:
    """``new_pod(name, labels=..., annotations=..., node=...)``: a minimal valid V1Pod body."""
    return pod_body


@pytest.fixture
def raw(served: Served) -> Callable[..., tuple[int, Any]]:
    """``raw(method, path, body=None, content_type=...)`` against this test's server, as its admin."""

    def call(
        method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        return raw_request(served.url, method, path, body, content_type, served.tls)

    return call


@pytest.fixture
def client_for(request: pytest.FixtureRequest) -> Iterator[Callable[[str], client.ApiClient]]:
    """``client_for(url)``: another ApiClient for a kube-local or (https) the real server, closed after
    the test."""
    made: list[client.ApiClient] = []

    def make(url: str) -> client.ApiClient:
        if url.startswith("https://"):
            real: ApiServer = request.getfixturevalue("real_api_server")
            api = new_api_client(real.admin)
        else:
            api = make_client(url)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()
