"""How applications reach libvgpu's hooks: direct calls, cuGetProcAddress (v1 and v2, per-thread streams,
addresses the driver hands out that differ from its exports) and dlsym; CUDA_DISABLE_CONTROL pass-through."""

from __future__ import annotations

from libvgpu_harness import MiB, Runner

HOOKED = ["cuMemGetInfo", "cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cuMemAllocAsync",
          "cuDeviceTotalMem", "cuCtxCreate", "cuGetProcAddress"]  # fmt: skip


def test_cu_get_proc_address_returns_hooks_keyed_by_name_and_version(run: Runner) -> None:
    v = run("procaddr", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert v["v2.cuMemAlloc"] == "libvgpu" and v["v2.status"] == "0"
    assert int(v["procaddr_alloc_delta"]) == 2 * MiB  # allocations through the returned pointer are charged
    assert v["v1.cuMemFree"] == "libvgpu"
    assert int(v["procaddr_free_delta"]) == 0
    for name in HOOKED:
        assert v[name] == "libvgpu", name
    assert v["cuDeviceGetName"] == "driver"  # not hooked: the driver's own entry point
    assert v["cuCtxSetCurrent"] == "driver"
    assert v["ptsz_is_ptsz_hook"] == "1"  # per-thread-stream flag gives the _ptsz hook
    assert v["nested.cuMemAlloc"] == "libvgpu"  # cuGetProcAddress obtained through itself
    assert v["missing"] == "500" and v["missing_status"] == "1"  # the driver's answer, untouched
    assert int(v["procaddr_total"]) == 1 << 30


def test_cu_get_proc_address_maps_driver_addresses_it_never_saw(run: Runner) -> None:
    """A driver may return internal entry points that differ from its exported symbols."""
    v = run("procaddr", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g", "FAKE_PROCADDR_ALT": "1"}).values
    assert v["v2.cuMemAlloc"] == "libvgpu"
    assert int(v["procaddr_alloc_delta"]) == 2 * MiB
    assert v["cuMemGetInfo"] == "libvgpu" and v["cuLaunchKernel"] == "libvgpu"


def test_dlsym_of_driver_symbols_returns_hooks_and_nothing_else(run: Runner) -> None:
    v = run("dlsym", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert v["handle.cuMemAlloc_v2"] == "libvgpu"
    assert v["handle.cuGetProcAddress_v2"] == "libvgpu"
    assert v["handle.cuLaunchKernel"] == "libvgpu"
    assert v["default.cuMemGetInfo_v2"] == "libvgpu"
    assert v["nvml.nvmlDeviceGetMemoryInfo"] == "libvgpu"
    assert v["handle.cuDeviceGetName"] == "driver"
    assert v["nvml.nvmlDeviceGetCount_v2"] == "driver"
    assert v["handle.missing"] == "null"
    assert v["libc.cuMemAlloc_v2"] == "null"  # a lookup in a library without the name is never widened
    assert v["next.dlsym"] == "libvgpu"  # RTLD_NEXT stays relative to the caller
    assert v["next.getpid_ok"] == "1"
    assert int(v["dlsym_alloc_delta"]) == 3 * MiB


def test_disable_control_is_a_pure_pass_through(run: Runner) -> None:
    env = {"CUDA_DEVICE_MEMORY_LIMIT": "1g", "CUDA_DEVICE_SM_LIMIT": "30", "CUDA_DISABLE_CONTROL": "true"}
    v = run("info", env=env).values
    assert int(v["dev0.cu_total"]) == 16 << 30
    assert int(v["nvml0.total"]) == 16 << 30
    d = run("dlsym", env=env).values
    assert d["handle.cuMemAlloc_v2"] == "driver"
    assert d["nvml.nvmlDeviceGetMemoryInfo"] == "driver"
    p = run("procaddr", env=env).values
    assert p["v2.cuMemAlloc"] == "driver" and p["cuLaunchKernel"] == "driver"
    assert run("alloc", "0:2000", env=env).values["dev0.alloc_2000"] == "0"  # over the "limit": not enforced
    sm = run("sm", "async", "kernel", "0.5", "800", env=env)
    assert sm.float("share") > 0.9
    assert not run.cache.exists()  # no region, no slot


def test_fork_child_gets_its_own_slot(run: Runner) -> None:
    v = run("fork", env={"CUDA_DEVICE_MEMORY_LIMIT": "1g"}).values
    assert v["child_alloc"] == "0"
    assert v["child_status"] == "0"
