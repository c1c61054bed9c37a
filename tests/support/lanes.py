"""Test lanes: every test below a SLOW_DIRS directory (whole processes, manifest renders, libvgpu builds),
and every test that runs on the upstream control plane (a `real` parameter or the `real_api_server`
fixture; marked in tests/conftest.py), is marked `slow`, so `make test-fast` (`pytest -m "not slow"`) runs
pure logic, kube-local and contracts while `make test` runs everything."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SLOW_DIRS = ("integration", "deploy", "libvgpu", "chaos")


def is_slow_path(path: Path) -> bool:
    """True for a test file below one of the SLOW_DIRS of the tests directory."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        return False
    return len(parts) > 1 and parts[0] in SLOW_DIRS
