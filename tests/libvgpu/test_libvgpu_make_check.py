"""CI runs the C tests: `make -C libvgpu check` (unit tests + scenarios under ASan/UBSan) must pass."""

from __future__ import annotations

import re
import subprocess

from libvgpu_harness import LIBVGPU, Built


def test_make_check_passes(built: Built) -> None:
    proc = subprocess.run(["make", "-C", str(LIBVGPU), "check"], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    m = re.search(r"make check: (\d+)/(\d+) passed", out)
    assert m is not None and m.group(1) == m.group(2) and int(m.group(2)) >= 15, out[-2000:]


def test_release_library_exports_only_hooks_and_dlsym(built: Built) -> None:
    proc = subprocess.run(
        ["nm", "-D", "--defined-only", str(built.lib)], capture_output=True, text=True, check=True
    )
    names = {line.split()[-1] for line in proc.stdout.splitlines() if line.strip()}
    assert "dlsym" in names
    assert {"cuMemAlloc_v2", "cuGetProcAddress", "cuGetProcAddress_v2", "cuLaunchKernel_ptsz",
            "nvmlDeviceGetMemoryInfo_v2"} <= names  # fmt: skip
    assert all(n == "dlsym" or n.startswith(("cu", "nvml")) for n in names), sorted(names)
    deps = subprocess.run(
        ["readelf", "-d", str(built.lib)], capture_output=True, text=True, check=True
    ).stdout
    assert "libcuda" not in deps and "libnvidia-ml" not in deps  # loaded at run time, not linked
