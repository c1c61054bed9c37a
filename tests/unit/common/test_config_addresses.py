"""Addresses and URLs in every service's config are checked at start: an out-of-range port or a URL of the
wrong scheme is a config error naming the key (exit 2), never a server on some other port or a retry
loop against `ftp://x` (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.config import KubeAccess, check_grpc_bind, check_server_url
from services.device_plugin.config import DevicePluginConfig
from services.monitor.config import MonitorConfig
from services.scheduler.config import SchedulerConfig

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("127.0.0.1:9090", True),
        (":9090", True),
        ("[::1]:0", True),
        ("unix:/run/kube-vgpu/grpc.sock", True),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:-1", False),
        ("127.0.0.1", False),
        ("unix:", False),
        ("unix:/", False),
    ],
)
def test_grpc_bind(address: str, ok: bool) -> None:
    if ok:
        assert check_grpc_bind(address) == address
    else:
        with pytest.raises(ValueError):
            check_grpc_bind(address)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8001", True),
        ("https://10.0.0.1:6443/", True),
        ("https://kubernetes.default.svc", True),
        ("ftp://x", False),
        ("127.0.0.1:8001", False),
        ("http://", False),
        ("https://host:70000", False),
        ("", False),
    ],
)
def test_server_url(url: str, ok: bool) -> None:
    if ok:
        assert check_server_url(url) == url
        assert KubeAccess(server=url).server == url
    else:
        with pytest.raises(ValueError):
            check_server_url(url)
        with pytest.raises(ValidationError, match="server"):
            KubeAccess(server=url)


@pytest.mark.parametrize(
    "model", [SchedulerConfig, MonitorConfig, DevicePluginConfig], ids=lambda m: m.__name__
)
def test_every_service_checks_its_grpc_bind(model: type) -> None:
    extra = {"node_name": "n"} if model is not SchedulerConfig else {}
    with pytest.raises(ValidationError, match="grpc_bind"):
        model(grpc_bind="127.0.0.1:99999", **extra)


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["kube-vgpu-scheduler", "--grpc-bind", "127.0.0.1:99999"], "grpc_bind"),
        (["kube-vgpu-scheduler", "--set", "kube.server=ftp://x"], "kube.server"),
    ],
)
def test_the_process_exits_2_naming_the_key(argv: list[str], key: str) -> None:
    result = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr
