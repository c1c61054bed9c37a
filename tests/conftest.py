"""Fixtures shared across test directories, and the test lanes (`tests/support/lanes.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.config import KubeAccess
from tests.support.apiservers import API_SERVERS, ApiServer, reset_real, start_real
from tests.support.lanes import is_slow_path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow_path(item.path):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def kube_local_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real kube-local server on a free loopback port, in a thread of this process."""
    from sim.kubelocal.server import KubeLocalThread

    server = KubeLocalThread()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def real_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The upstream control plane (etcd, kube-apiserver, kube-controller-manager), once per session."""
    server = start_real(tmp_path_factory.mktemp("controlplane"))
    try:
        yield server
    finally:
        server.real.stop()


@pytest.fixture(params=API_SERVERS)
def api_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The same test body on kube-local (fresh per test) and on the upstream kube-apiserver (emptied of
    what the test made when it ends)."""
    if request.param == "kube-local":
        from sim.kubelocal.server import KubeLocalThread

        server = KubeLocalThread()
        try:
            url = server.start()
            yield ApiServer("kube-local", url, KubeAccess(server=url))
        finally:
            server.close()
        return
    real: ApiServer = request.getfixturevalue("real_api_server")
    try:
        yield real
    finally:
        reset_real(real)
