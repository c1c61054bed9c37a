"""Host files for Allocate: versioned libvgpu and ld.so.preload, per-container dirs, path checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.device_plugin.hostfs import (
    HostLayout,
    HostPathError,
    container_dir_name,
    ensure_container_dir,
    install_versioned,
    prepare_host,
)


def layout(tmp_path: Path) -> HostLayout:
    return HostLayout(
        hook_path="/usr/local", host_hook_dir=str(tmp_path / "host"), vgpulock_dir=str(tmp_path / "lk")
    )


def test_upgrade_installs_a_new_versioned_lib_and_never_rewrites_the_old(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    source = tmp_path / "libvgpu.so"
    source.write_bytes(b"v1 library")
    first = prepare_host(lay, str(source))
    assert first.libvgpu.name.startswith("libvgpu.so.") and first.libvgpu.read_bytes() == b"v1 library"
    inode_v1 = first.libvgpu.stat().st_ino
    # ld.so.preload names the library where the container sees it.
    assert first.ld_so_preload.read_text() == "/usr/local/vgpu/libvgpu.so\n"

    # Same content again: the same file (same inode) is reused, nothing is rewritten under running pods.
    assert prepare_host(lay, str(source)).libvgpu.stat().st_ino == inode_v1

    source.write_bytes(b"v2 library")
    second = prepare_host(lay, str(source))
    assert second.libvgpu != first.libvgpu
    assert first.libvgpu.read_bytes() == b"v1 library" and first.libvgpu.stat().st_ino == inode_v1
    assert second.libvgpu.read_bytes() == b"v2 library"
    assert stat.S_IMODE(os.stat(lay.vgpulock_dir).st_mode) == 0o777
    # No temporary files are left behind.
    assert not [p for p in lay.host_vgpu.iterdir() if p.name.startswith(".")]


def test_without_a_source_the_plain_lib_path_is_used(tmp_path: Path) -> None:
    libs = prepare_host(layout(tmp_path), None)
    assert libs.libvgpu == layout(tmp_path).host_vgpu / "libvgpu.so"
    assert libs.license is None


def test_license_file_adds_validator(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    lay.host_vgpu.mkdir(parents=True)
    (lay.host_vgpu / "license").write_text("x")
    libs = prepare_host(lay, None)
    assert libs.license == lay.host_vgpu / "license" and libs.validator == lay.host_vgpu / "vgpuvalidator"


def test_install_versioned_repairs_a_corrupt_copy(tmp_path: Path) -> None:
    target = install_versioned(tmp_path, "f", b"good")
    target.write_bytes(b"bad")
    assert install_versioned(tmp_path, "f", b"good").read_bytes() == b"good"


def test_container_dir_is_created_once_and_kept(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    d = ensure_container_dir(lay, "uid-1", "main")
    assert d.name == "uid-1_main" and stat.S_IMODE(d.stat().st_mode) == 0o777
    (d / "cache").write_text("mapped by a running process")
    again = ensure_container_dir(lay, "uid-1", "main")
    assert (again / "cache").read_text() == "mapped by a running process"
    assert [p.name for p in lay.containers_dir.iterdir()] == ["uid-1_main"]


@pytest.mark.parametrize(
    ("uid", "name"),
    [
        ("..", "main"),
        ("a/../b", "main"),
        ("uid", "a/b"),
        ("uid", ".."),
        ("uid\x00", "m"),
        ("uid", "UPPER"),
        ("", "m"),
    ],
)
def test_unsafe_components_are_refused(tmp_path: Path, uid: str, name: str) -> None:
    with pytest.raises(HostPathError):
        container_dir_name(uid, name)
    with pytest.raises(HostPathError):
        ensure_container_dir(layout(tmp_path), uid, name)
    assert not (tmp_path / "host").exists() or not any((tmp_path / "host").rglob("*_*"))
