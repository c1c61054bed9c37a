"""Fixtures shared across test directories, and the test lanes (`tests/support/lanes.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
