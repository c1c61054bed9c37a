"""Prometheus helpers shared by the services that serve /metrics."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def build_info_labels() -> dict[str, str]:
    try:
        version = metadata.version("kube-vgpu")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return {
        "version": version,
        "revision": "",
        "build_date": "",
        # HAMi reports the Go toolchain here; ours is the Python runtime.
        "go_version": f"python{platform.python_version()}",
        "compiler": sys.implementation.name,
        "platform": f"{sys.platform}/{arch}",
    }
