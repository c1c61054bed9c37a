"""`buf lint` (STANDARD, kubelet copies ignored) passes on the repository and catches violations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"


def run_buf_lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.is_file(), f"buf not installed next to {sys.executable} (make venv installs buf-bin)"
    return subprocess.run(
        [str(BUF), "lint", "--error-format=json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def violation_types(output: str) -> set[str]:
    return {json.loads(line)["type"] for line in output.splitlines() if line.startswith("{")}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of buf.yaml and protos/ to break on purpose."""
    shutil.copy2(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    return tmp_path


def test_repository_passes_buf_lint() -> None:
    result = run_buf_lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert violation_types(result.stdout) == set()


def test_style_violation_fails_lint(workspace: Path) -> None:
    proto = workspace / "protos" / "kubevgpu" / "device" / "v1" / "device.proto"
    text = proto.read_text()
    assert "  DEVICE_HEALTH_UNHEALTHY = 2;\n" in text
    proto.write_text(
        text.replace("  DEVICE_HEALTH_UNHEALTHY = 2;\n", "  DEVICE_HEALTH_UNHEALTHY = 2;\n  Broken = 3;\n")
    )

    result = run_buf_lint(workspace)

    assert result.returncode != 0
    assert "ENUM_VALUE_UPPER_SNAKE_CASE" in violation_types(result.stdout), result.stdout + result.stderr


def test_shared_request_type_fails_lint(workspace: Path) -> None:
    proto = workspace / "protos" / "kubevgpu" / "scheduler" / "v1" / "scheduler_service.proto"
    text = proto.read_text()
    old = "rpc GetNode(GetNodeRequest) returns (GetNodeResponse);"
    assert old in text
    proto.write_text(text.replace(old, "rpc GetNode(ListNodesRequest) returns (GetNodeResponse);"))

    types = violation_types(run_buf_lint(workspace).stdout)

    assert {"RPC_REQUEST_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"} <= types


def test_kubelet_copies_pass_only_because_they_are_ignored(workspace: Path) -> None:
    config = workspace / "buf.yaml"
    text = config.read_text()
    assert text.count("- protos/kubevgpu/kubelet\n") == 2
    config.write_text(text.replace("- protos/kubevgpu/kubelet\n", "- protos/kubevgpu/does-not-exist\n"))

    result = run_buf_lint(workspace)

    assert result.returncode != 0
    # Upstream names that must stay as they are for wire compatibility.
    assert {"PACKAGE_DIRECTORY_MATCH", "SERVICE_SUFFIX", "FIELD_LOWER_SNAKE_CASE"} <= violation_types(
        result.stdout
    )
