"""`hami_build_info`, the one series every service that serves /metrics reports the same way."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from services.common.prom_text import Family


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


def build_info_family(labels: dict[str, str]) -> Family:
    """The family of `hami_build_info` (no zone label; its one sample is 1)."""
    return Family("hami_build_info", "Build information", label_names=tuple(labels))
