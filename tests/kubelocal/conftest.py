"""Fixtures: a kube-local per test, in a background thread, and official-client handles onto it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from sim.kubelocal.server import KubeLocalThread


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
    url: str, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """A plain urllib request; returns (status, decoded JSON body or text)."""
    req = urllib.request.Request(url + path, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
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
def url(kube_local: KubeLocalThread) -> str:
    return kube_local.url


@pytest.fixture
def api_client(url: str) -> Iterator[client.ApiClient]:
    api = make_client(url)
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
def raw(url: str) -> Callable[..., tuple[int, Any]]:
    """``raw(method, path, body=None, content_type=...)`` against this test's kube-local."""

    def call(
        method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        return raw_request(url, method, path, body, content_type)

    return call


@pytest.fixture
def client_for() -> Iterator[Callable[[str], client.ApiClient]]:
    """``client_for(url)``: an ApiClient for another kube-local, closed after the test."""
    made: list[client.ApiClient] = []

    def make(url: str) -> client.ApiClient:
        api = make_client(url)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()
