"""The fast lane: `-m "not slow"` leaves out whole-process, deploy and libvgpu tests, and only those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lanes import TESTS, is_slow_path


@pytest.mark.parametrize(
    ("relative", "slow"),
    [
        ("integration/test_local_mode.py", True),
        ("deploy/test_deploy_render.py", True),
        ("libvgpu/test_libvgpu_sm.py", True),
        ("chaos/test_chaos_suite.py", True),
        ("unit/scheduler/test_fit_pod.py", False),
        ("kubelocal/test_kubelocal_crud.py", False),
        ("contract/test_kubelet_wire.py", False),
        ("integration_helpers.py", False),  # a file named like a lane is not below it
    ],
)
def test_lane_of_a_path(relative: str, slow: bool) -> None:
    assert is_slow_path(TESTS / relative) is slow


def test_outside_the_tests_directory_is_never_slow(tmp_path: Path) -> None:
    assert not is_slow_path(tmp_path / "integration" / "test_x.py")


def test_fast_lane_collection_leaves_out_exactly_the_slow_directories() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    collected = [line.split("::")[0] for line in out.splitlines() if "::" in line]
    assert collected, out[-2000:]
    assert not [p for p in collected if p.split("/")[1] in {"integration", "deploy", "libvgpu", "chaos"}]
    assert any(p.startswith("tests/unit/") for p in collected)
    assert any(p.startswith("tests/kubelocal/") for p in collected)
