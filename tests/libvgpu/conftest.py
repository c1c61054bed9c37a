"""libvgpu under test: built once per session with make, run with LD_PRELOAD against the fake driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from libvgpu_harness import Built, Runner, build


@pytest.fixture(scope="session")
def built() -> Built:
    return build()


@pytest.fixture
def run(built: Built, tmp_path: Path) -> Iterator[Runner]:
    yield Runner(built, tmp_path / "vgpu.cache")
