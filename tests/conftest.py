"""Fixtures shared across test directories, and the test lanes (`tests/support/lanes.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common.config import KubeAccess
from tests.support.apiservers import API_SERVERS, ApiServer, reset_real, start_real
from tests.support.lanes import is_slow_path

# The parameters that choose the server a test runs on (`api_server` below, `server_kind` in
# tests/kubelocal/conftest.py, `control_plane` in the chaos and local-mode tests), and the value of each that
# selects the upstream control plane.
CONTROL_PLANE_PARAMS = ("api_server", "server_kind", "control_plane")
REAL_CONTROL_PLANE = "real"


def needs_real_control_plane(item: pytest.Item) -> bool:
    """True for a test that runs on the upstream control plane (it starts etcd and kube-apiserver, and on a
    fresh clone builds them first): a CONTROL_PLANE_PARAMS parameter is "real", or it asks for the
    `real_api_server` fixture itself."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(params.get(name) == REAL_CONTROL_PLANE for name in CONTROL_PLANE_PARAMS):
        return True
    return "real_api_server" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow lane: tests below tests/support/lanes.py's SLOW_DIRS, and every test on the upstream
    control plane, so `-m "not slow"` never starts (or builds) it."""
    for item in items:
        if is_slow_path(item.path) or needs_real_control_plane(item):
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
