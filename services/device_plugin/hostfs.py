"""Host files behind Allocate's mounts, written so that an upgrade never breaks a running container.

HAMi copies `libvgpu.so` over the one running containers have mapped and recreates a container's cache
directory on Allocate, which crashes pods on a plugin upgrade (HAMi#727, HAMi#753). Here:

* libvgpu is installed as `<vgpu>/libvgpu.so.<content hash>`, written to a temporary name, fsynced and
  renamed into place; an existing file of that name is never rewritten. New containers mount the new
  file, running ones keep the inode they mounted.
* `ld.so.preload` likewise becomes `<vgpu>/ld.so.preload.<content hash>`.
* a container's cache directory `<vgpu>/containers/<podUID>_<container>` is created under a temporary
  name and renamed into place; an existing one is kept (its cache may be mapped by a running process).

`<vgpu>` is `<host hook path>/vgpu`, the host side of `<HOOK_PATH>/vgpu` (HAMi's `/usr/local/vgpu`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.common.log import get_logger

log = get_logger("device_plugin.hostfs")

_HASH_LEN = 12
# Kubernetes pod UIDs are UUIDs; allow any plain token of that alphabet, nothing that walks the tree.
_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Container names are DNS-1123 labels.
_CONTAINER_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class HostPathError(ValueError):
    """A pod UID or container name that must not become part of a host path."""


def check_path_component(what: str, value: str, pattern: re.Pattern[str] = _UID_RE) -> str:
    if not isinstance(value, str) or not value:
        raise HostPathError(f"{what} is empty")
    if "/" in value or "\\" in value or "\x00" in value or ".." in value or value in (".", ".."):
        raise HostPathError(f"{what} {value!r} contains a path separator or '..'")
    if pattern.fullmatch(value) is None:
        raise HostPathError(f"{what} {value!r} has characters outside [{pattern.pattern}]")
    return value


def container_dir_name(pod_uid: str, container: str) -> str:
    """`<podUID>_<container>`, after checking both parts are safe as one path component."""
    check_path_component("pod UID", pod_uid)
    check_path_component("container name", container, _CONTAINER_RE)
    return f"{pod_uid}_{container}"


@dataclass(frozen=True, slots=True)
class HostLayout:
    """Where things are: `hook_path` as containers see it, `host_hook_dir` as this process sees the host."""

    hook_path: str
    host_hook_dir: str
    vgpulock_dir: str

    @property
    def container_vgpu(self) -> str:
        return f"{self.hook_path.rstrip('/')}/vgpu"

    @property
    def host_vgpu(self) -> Path:
        return Path(self.host_hook_dir) / "vgpu"

    @property
    def containers_dir(self) -> Path:
        return self.host_vgpu / "containers"

    def container_dir(self, pod_uid: str, container: str) -> Path:
        return self.containers_dir / container_dir_name(pod_uid, container)


@dataclass(frozen=True, slots=True)
class LibFiles:
    """Host files every hami-core container mounts."""

    libvgpu: Path
    ld_so_preload: Path
    license: Path | None = None
    validator: Path | None = None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_LEN]


def _atomic_write(target: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def install_versioned(directory: Path, base: str, data: bytes, mode: int = 0o644) -> Path:
    """`<directory>/<base>.<hash>` holding `data`; written once (atomically), reused afterwards."""
    target = directory / f"{base}.{_digest(data)}"
    try:
        if target.read_bytes() == data:
            return target
    except FileNotFoundError:
        pass
    _atomic_write(target, data, mode)
    log.info("host_file_installed", path=str(target))
    return target


def prepare_host(layout: HostLayout, libvgpu_source: str | None) -> LibFiles:
    """Create `<vgpu>`, `<vgpu>/containers` and the lock dir; install libvgpu and ld.so.preload."""
    layout.host_vgpu.mkdir(parents=True, exist_ok=True)
    layout.containers_dir.mkdir(parents=True, exist_ok=True)
    ensure_lock_dir(layout)
    if libvgpu_source:
        lib = install_versioned(layout.host_vgpu, "libvgpu.so", Path(libvgpu_source).read_bytes(), 0o755)
    else:
        lib = layout.host_vgpu / "libvgpu.so"
        if not lib.exists():
            log.warning(
                "libvgpu_missing",
                path=str(lib),
                hint="set libvgpu_source, or install libvgpu.so there; containers get no memory/SM limits",
            )
    # The preload file names the library where containers see it (the mount below), not the host path.
    preload = install_versioned(
        layout.host_vgpu, "ld.so.preload", f"{layout.container_vgpu}/libvgpu.so\n".encode()
    )
    license_file = layout.host_vgpu / "license"
    if license_file.exists():
        return LibFiles(lib, preload, license_file, layout.host_vgpu / "vgpuvalidator")
    return LibFiles(lib, preload)


def ensure_lock_dir(layout: HostLayout) -> Path:
    lock = Path(layout.vgpulock_dir)
    lock.mkdir(parents=True, exist_ok=True)
    os.chmod(lock, 0o777)
    return lock


def ensure_container_dir(layout: HostLayout, pod_uid: str, container: str) -> Path:
    """The container's cache directory, mode 0777; created atomically, kept when it already exists."""
    final = layout.container_dir(pod_uid, container)
    if final.is_dir():
        os.chmod(final, 0o777)
        return final
    layout.containers_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=layout.containers_dir))
    try:
        os.chmod(staging, 0o777)
        os.rename(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():  # lost a race to another creator: fine; anything else: raise
            raise
    return final
