"""A simulated GPU backend read from a YAML inventory: local mode and tests, no driver needed.

Two inventory shapes are accepted:

* the local-mode cluster file (`deploy/local/cluster.yaml`): a top-level `nodes:` list; the entry whose
  `name` is this plugin's node name is used. GPUs without a `uuid` get the same stable UUID local mode
  gives them (uuid5 of `<node>/<index>`), so a plugin started on a simulated node registers exactly the
  GPUs `kube-vgpu-local up` registered;
* a per-node file: a top-level `gpus:` list.

Each GPU: `type` (card name), `memoryMiB`, optional `numa` (0), `uuid`, `healthy` (true), `cores` (accepted
for the cluster file's sake, not used: the plugin derives cores from `deviceCoreScaling`), `migEnabled`.

Health can be driven three ways: edit the inventory (a GPU with `healthy: false` is registered unhealthy
until set back; the file is re-read when its mtime or size changes), append JSON lines
`{"uuid": "GPU-...", "xid": 79}` to the events file, or call `inject()` from a test.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from services.common.config import ConfigError, ConfigModel, read_config_file, validate_config
from services.common.log import get_logger
from services.device_plugin.gpu import GpuBackendError, GpuEvent, GpuInfo

log = get_logger("device_plugin.simulated")

# Local mode registers its simulated nodes with these UUIDs too (`sim.local.cluster`), so a plugin started
# on a simulated node registers exactly the GPUs `kube-vgpu-local up` registered.
SIMULATED_GPU_NAMESPACE = uuidlib.UUID("6b1c2f0e-7d54-4b8e-9a3c-2f5d8e1a4c70")

_POLL_SLICE = 0.1


def simulated_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuidlib.uuid5(SIMULATED_GPU_NAMESPACE, f"{node}/{index}"))


class _GpuEntry(ConfigModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: str = Field(..., min_length=1)
    memory_mib: int | None = Field(None, ge=0, alias="memoryMiB")
    numa: int = Field(0, ge=0)
    uuid: str | None = Field(None, min_length=1)
    healthy: bool = True
    cores: int | None = None
    mig_enabled: bool = Field(False, alias="migEnabled")


class _NodeEntry(ConfigModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    gpus: list[_GpuEntry] = Field(default_factory=list)


class _ClusterFile(ConfigModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    nodes: list[_NodeEntry]


class _NodeFile(ConfigModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    gpus: list[_GpuEntry]


def load_inventory(path: str | Path, node_name: str) -> list[GpuInfo]:
    """The GPUs of `node_name` in the inventory file; raises GpuBackendError naming what is wrong."""
    try:
        data = read_config_file(path)
        if "nodes" in data:
            cluster = validate_config(
                _ClusterFile, data, what=f"simulated inventory {path}", default_source=f"file {path}"
            )
            matches = [n for n in cluster.nodes if n.name == node_name]
            if not matches:
                names = ", ".join(n.name for n in cluster.nodes) or "none"
                raise GpuBackendError(
                    f"simulated inventory {path} has no node named {node_name!r} (nodes: {names})"
                )
            entries = matches[0].gpus
        elif "gpus" in data:
            entries = validate_config(
                _NodeFile, data, what=f"simulated inventory {path}", default_source=f"file {path}"
            ).gpus
        else:
            raise GpuBackendError(f"simulated inventory {path} needs a top-level 'nodes' or 'gpus' list")
    except ConfigError as exc:
        raise GpuBackendError(str(exc)) from None
    gpus = [
        GpuInfo(
            uuid=entry.uuid or simulated_uuid(node_name, index),
            index=index,
            name=entry.type,
            memory_mib=entry.memory_mib or None,
            numa=entry.numa,
            mig_enabled=entry.mig_enabled,
            present=entry.healthy,
        )
        for index, entry in enumerate(entries)
    ]
    seen: set[str] = set()
    for gpu in gpus:
        if gpu.uuid in seen:
            raise GpuBackendError(f"simulated inventory {path}: GPU UUID {gpu.uuid} appears twice")
        seen.add(gpu.uuid)
    return gpus


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class SimulatedBackend:
    """GPUs from a YAML inventory; see the module docstring for the file shapes and health injection."""

    name = "simulated"

    def __init__(self, inventory: str | Path, node_name: str, events_file: str | Path | None = None) -> None:
        self._inventory = Path(inventory)
        self._node_name = node_name
        self._events_file = Path(events_file) if events_file else None
        self._events: queue.Queue[GpuEvent] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stamp = _file_stamp(self._inventory)
        self._events_offset = 0
        if self._events_file is not None:
            # Only lines appended after start count: an old file does not replay yesterday's faults.
            try:
                self._events_offset = self._events_file.stat().st_size
            except OSError:
                self._events_offset = 0
        self._gpus = load_inventory(self._inventory, node_name)

    def discover(self) -> Sequence[GpuInfo]:
        with self._lock:
            return list(self._gpus)

    def inject(self, event: GpuEvent) -> None:
        """Queue a health event as if the driver had reported it (tests, local mode)."""
        self._events.put(event)

    def next_event(self, timeout: float) -> GpuEvent | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._closed.is_set():
            self._check_inventory()
            self._check_events_file()
            remaining = deadline - time.monotonic()
            try:
                return self._events.get(timeout=max(0.0, min(_POLL_SLICE, remaining)))
            except queue.Empty:
                if remaining <= 0:
                    return None
        return None

    def close(self) -> None:
        self._closed.set()

    # --- file watches ------------------------------------------------------------------------------

    def _check_inventory(self) -> None:
        stamp = _file_stamp(self._inventory)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            gpus = load_inventory(self._inventory, self._node_name)
        except GpuBackendError as exc:
            # A half-written or broken edit keeps the last good inventory.
            log.warning("simulated_inventory_unreadable", path=str(self._inventory), error=str(exc))
            return
        with self._lock:
            self._gpus = gpus
        log.info("simulated_inventory_reloaded", path=str(self._inventory), gpus=len(gpus))
        self._events.put(GpuEvent(kind="changed", detail=f"{self._inventory} changed"))

    def _check_events_file(self) -> None:
        if self._events_file is None:
            return
        try:
            size = self._events_file.stat().st_size
        except OSError:
            return
        if size < self._events_offset:
            self._events_offset = 0  # truncated: start over
        if size == self._events_offset:
            return
        with self._events_file.open("rb") as fh:
            fh.seek(self._events_offset)
            chunk = fh.read(size - self._events_offset)
        complete, _, _partial = chunk.rpartition(b"\n")
        if not complete and not chunk.endswith(b"\n"):
            return  # wait for the line to be finished
        self._events_offset += len(complete) + 1
        for raw in complete.split(b"\n"):
            if raw.strip():
                self._parse_event_line(raw)

    def _parse_event_line(self, raw: bytes) -> None:
        try:
            item: Any = json.loads(raw)
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
            uuid = item.get("uuid")
            xid = item.get("xid")
            if uuid is not None and not isinstance(uuid, str):
                raise ValueError("uuid must be a string")
            if xid is not None and (isinstance(xid, bool) or not isinstance(xid, int)):
                raise ValueError("xid must be an integer")
            kind = str(item.get("kind") or ("xid" if xid is not None else "lost"))
        except ValueError as exc:
            log.warning("simulated_event_ignored", line=raw.decode(errors="replace")[:200], error=str(exc))
            return
        self._events.put(GpuEvent(kind=kind, uuid=uuid, xid=xid, detail=f"from {self._events_file}"))


def events_file_line(uuid: str | None, xid: int | None = None, kind: str | None = None) -> str:
    """One line for the events file (helper for local mode scripts and tests)."""
    item: dict[str, Any] = {"uuid": uuid}
    if xid is not None:
        item["xid"] = xid
    if kind is not None:
        item["kind"] = kind
    return json.dumps(item) + os.linesep
