"""The fast lane: `-m "not slow"` leaves out whole-process, deploy and libvgpu tests and every test on the
upstream control plane, and only those."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pytest_collection_modifyitems
from tests.support.lanes import TESTS, is_slow_path

# A parameter id "real" in a collected test's id, alone or among others ("real-pods", "x-real").
_REAL_PARAM_ID = re.compile(r"\[(?:[^\]]*-)?real(?:-[^\]]*)?\]$")


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
    on_real = [line for line in out.splitlines() if "::" in line and _REAL_PARAM_ID.search(line)]
    assert not on_real, on_real[:10]
    assert any(p.startswith("tests/kubelocal/") and "[kube-local" in p for p in out.splitlines())


@dataclass
class _Callspec:
    params: dict[str, Any]


@dataclass
class _Item:
    """What the collection hook reads of a collected test, and the marks it adds."""

    path: Path
    params: dict[str, Any] | None = None
    fixturenames: tuple[str, ...] = ()
    marks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.params is not None:
            self.callspec = _Callspec(self.params)

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.name)


@pytest.mark.parametrize(
    ("params", "fixturenames", "slow"),
    [
        ({"server_kind": "real"}, ("server_kind", "served"), True),
        ({"server_kind": "kube-local"}, ("server_kind", "served"), False),
        ({"api_server": "real"}, ("api_server",), True),
        ({"api_server": "kube-local"}, ("api_server",), False),
        ({"control_plane": "real"}, (), True),
        ({"server_kind": "real", "resource": "pods"}, ("server_kind",), True),
        ({"resource": "real"}, (), False),  # "real" only counts for a parameter that picks the server
        (None, ("real_api_server",), True),  # the upstream control plane without a parameter
        (None, ("kube_local_url",), False),
    ],
)
def test_a_test_on_the_real_control_plane_is_slow_wherever_it_is(
    params: dict[str, Any] | None, fixturenames: tuple[str, ...], slow: bool
) -> None:
    item = _Item(TESTS / "kubelocal" / "test_x.py", params, fixturenames)
    pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert item.marks == (["slow"] if slow else [])
