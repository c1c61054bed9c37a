"""Fixtures shared across test directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def kube_local_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real kube-local server on a free loopback port, in a thread of this process."""
    from sim.kubelocal.server import KubeLocalThread

    server = KubeLocalThread()
    try:
        yield server.start()
    finally:
        server.close()
