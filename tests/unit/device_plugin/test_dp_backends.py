"""Both GPU backends behind the one interface: the simulated inventory and NVML (faked, and real when a
GPU is present)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.device_plugin.gpu import GpuBackend, GpuBackendError, GpuEvent
from services.device_plugin.nvml import NvmlBackend, read_numa_node
from sim.gpus.backend import (
    SimulatedBackend,
    events_file_line,
    load_inventory,
)

REPO = Path(__file__).resolve().parents[3]


def test_cluster_file_node_is_picked_with_local_modes_uuids() -> None:
    from sim.local.cluster import simulated_uuid as local_uuid

    gpus = load_inventory(REPO / "deploy/local/cluster.yaml", "gpu-node-b")
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.numa for g in gpus] == [0, 0, 1, 1]
    assert {g.name for g in gpus} == {"NVIDIA-A100-SXM4-80GB"}
    assert {g.memory_mib for g in gpus} == {81920}
    # Same identities as `kube-vgpu-local up` registers, so both write the same annotation.
    assert [g.uuid for g in gpus] == [local_uuid("gpu-node-b", i) for i in range(4)]


def test_per_node_inventory_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text("gpus:\n- {type: Tesla T4, memoryMiB: 15360, uuid: GPU-one, healthy: false}\n")
    (gpu,) = load_inventory(path, "any-node")
    assert (gpu.uuid, gpu.name, gpu.present) == ("GPU-one", "Tesla T4", False)
    with pytest.raises(GpuBackendError, match="no node named 'missing'"):
        load_inventory(REPO / "deploy/local/cluster.yaml", "missing")
    path.write_text("gpus:\n- {type: T4, memoryMiB: 1, colour: red}\n")
    with pytest.raises(GpuBackendError, match="colour"):
        load_inventory(path, "n")
    path.write_text(
        "gpus:\n- {type: T4, memoryMiB: 1, uuid: GPU-x}\n- {type: T4, memoryMiB: 1, uuid: GPU-x}\n"
    )
    with pytest.raises(GpuBackendError, match="appears twice"):
        load_inventory(path, "n")


def _next(backend: GpuBackend, timeout: float = 5.0) -> GpuEvent | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = backend.next_event(0.2)
        if event is not None:
            return event
    return None


def test_simulated_health_injection_file_watch_and_events_file(tmp_path: Path) -> None:
    inventory = tmp_path / "gpus.yaml"
    inventory.write_text("gpus:\n- {type: T4, memoryMiB: 15360, uuid: GPU-a}\n")
    events = tmp_path / "events.jsonl"
    events.write_text(events_file_line("GPU-a", xid=1))  # present before start: not replayed
    backend = SimulatedBackend(inventory, "n", events)
    try:
        assert backend.next_event(0.05) is None
        backend.inject(GpuEvent(kind="xid", uuid="GPU-a", xid=79))
        assert _next(backend) == GpuEvent(kind="xid", uuid="GPU-a", xid=79)

        with events.open("a") as fh:
            fh.write(events_file_line("GPU-a", xid=48))
            fh.write("not json\n")
            fh.write('{"uuid": "GPU-a", "kind": "lost"')  # unfinished line: read once complete
        event = _next(backend)
        assert event is not None and (event.kind, event.uuid, event.xid) == ("xid", "GPU-a", 48)
        with events.open("a") as fh:
            fh.write("}\n")
        event = _next(backend)
        assert event is not None and (event.kind, event.uuid) == ("lost", "GPU-a")

        inventory.write_text("gpus:\n- {type: T4, memoryMiB: 15360, uuid: GPU-a, healthy: false}\n")
        event = _next(backend)
        assert event is not None and event.kind == "changed"
        assert [g.present for g in backend.discover()] == [False]
        inventory.write_text("gpus: [{type: T4}")  # broken edit keeps the last good inventory
        _next(backend, 0.5)
        assert [g.present for g in backend.discover()] == [False]
    finally:
        backend.close()
    assert backend.next_event(1.0) is None


# --- NVML, faked ----------------------------------------------------------------------------------


class _NvmlError(Exception):
    pass


class _NotSupported(_NvmlError):
    pass


class _Timeout(_NvmlError):
    pass


def fake_nvml(cards: list[dict[str, Any]], events: list[Any]) -> SimpleNamespace:
    calls: list[str] = []

    def handle(i: int) -> int:
        return i

    def memory(h: int) -> Any:
        if cards[h]["mem"] is None:
            raise _NotSupported()
        return SimpleNamespace(total=cards[h]["mem"] * 1024 * 1024 + 12345)

    def wait(_set: Any, _ms: int) -> Any:
        if not events:
            raise _Timeout()
        item = events.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return SimpleNamespace(
        calls=calls,
        NVMLError=_NvmlError,
        NVMLError_NotSupported=_NotSupported,
        NVMLError_Timeout=_Timeout,
        NVML_DEVICE_MIG_ENABLE=1,
        nvmlEventTypeXidCriticalError=8,
        nvmlEventTypeDoubleBitEccError=2,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(cards),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUUID=lambda h: cards[h]["uuid"].encode(),
        nvmlDeviceGetName=lambda h: cards[h]["name"],
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=cards[h]["bus"].encode()),
        nvmlDeviceGetMigMode=lambda h: [cards[h].get("mig", 0), 0],
        nvmlEventSetCreate=lambda: "set",
        nvmlDeviceGetSupportedEventTypes=lambda h: 0xFF,
        nvmlDeviceRegisterEvents=lambda h, types, s: calls.append(f"register {h} {types}"),
        nvmlEventSetWait_v2=wait,
        nvmlEventSetFree=lambda s: calls.append("free"),
    )


def test_nvml_discovery_reads_numa_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "0000:3b:00.0").mkdir()
    (tmp_path / "0000:3b:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:af:00.0").mkdir()
    (tmp_path / "0000:af:00.0" / "numa_node").write_text("-1\n")
    cards = [
        {"uuid": "GPU-0", "name": "Tesla T4", "mem": 15360, "bus": "00000000:3B:00.0"},
        {"uuid": "GPU-1", "name": "NVIDIA A30", "mem": None, "bus": "00000000:AF:00.0", "mig": 1},
    ]
    nvml = fake_nvml(cards, [])
    backend = NvmlBackend(nvml, sysfs_root=tmp_path)  # type: ignore[arg-type]
    gpus = backend.discover()
    assert [(g.uuid, g.index, g.name, g.memory_mib, g.numa, g.mig_enabled) for g in gpus] == [
        ("GPU-0", 0, "Tesla T4", 15360, 1, False),
        ("GPU-1", 1, "NVIDIA A30", None, 0, True),
    ]
    assert read_numa_node("0000:00:00.0", tmp_path) == 0  # no such device: 0
    backend.close()
    assert nvml.calls[-1] == "shutdown"


def test_nvml_events_map_to_gpu_events(tmp_path: Path) -> None:
    cards = [{"uuid": "GPU-0", "name": "T4", "mem": 1, "bus": "0000:01:00.0"}]
    events = [
        SimpleNamespace(device=0, eventType=8, eventData=79),
        SimpleNamespace(device=0, eventType=2, eventData=0),
        _NvmlError(),
    ]
    nvml = fake_nvml(cards, events)
    backend = NvmlBackend(nvml, sysfs_root=tmp_path)  # type: ignore[arg-type]
    assert backend.next_event(0.1) == GpuEvent(kind="xid", uuid="GPU-0", xid=79)
    ecc = backend.next_event(0.1)
    assert ecc is not None and (ecc.kind, ecc.uuid) == ("ecc", "GPU-0")
    lost = backend.next_event(0.1)
    assert lost is not None and (lost.kind, lost.uuid) == ("lost", None)
    assert backend.next_event(0.1) is None  # timeout
    assert "register 0 10" in nvml.calls  # XID critical | double-bit ECC
    backend.close()
    assert backend.next_event(0.1) is None


def test_nvml_init_failure_explains_itself() -> None:
    nvml = fake_nvml([], [])

    def broken() -> None:
        raise _NvmlError()

    nvml.nvmlInit = broken
    with pytest.raises(GpuBackendError, match="simulated"):
        NvmlBackend(nvml)  # type: ignore[arg-type]


# --- NVML, real -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_nvml_inventory_matches_nvidia_smi() -> None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("nvidia-smi not found: no NVIDIA driver on this machine")
    try:
        backend = NvmlBackend()
    except GpuBackendError as exc:
        pytest.skip(f"NVML unavailable: {exc}")
    try:
        gpus = backend.discover()
    finally:
        backend.close()
    out = subprocess.run(
        [smi, "--query-gpu=uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = [[part.strip() for part in line.split(",")] for line in out.strip().splitlines()]
    if not rows:
        pytest.skip("nvidia-smi lists no GPU")
    assert [g.uuid for g in gpus] == [r[0] for r in rows]
    assert [g.name for g in gpus] == [r[1] for r in rows]
    for gpu, row in zip(gpus, rows, strict=True):
        if row[2].isdigit():
            assert gpu.memory_mib == int(row[2])
