"""The node's `hami.io/node-nvidia-register` annotation: what the scheduler reads about this node's GPUs.

Written when the node does not show the current devices (health included) yet, every
`register_interval_seconds` and at once when the devices change; a failed update is retried after
`register_retry_seconds`. With `publish_extended_capacity` the healthy GPUs' memory and cores also go into
the node's capacity and allocatable (HAMi#2839).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from services.common import wire
from services.common.codecs import encode_node_devices
from services.common.kube import KUBE_ERRORS
from services.common.log import get_logger
from services.device_plugin.config import DevicePluginConfig, PluginSettings
from services.device_plugin.devices import Snapshot, extended_capacity
from services.device_plugin.kubeops import KubeOps, annotations_of

log = get_logger("device_plugin")


class NodeRegistrar:
    """Keeps the node's register annotation (and opt-in capacity) in step with `current()`'s devices."""

    def __init__(
        self,
        cfg: DevicePluginConfig,
        settings: PluginSettings,
        kube: KubeOps,
        current: Callable[[], Snapshot],
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.kube = kube
        self._current = current
        self._wakeup = asyncio.Event()
        # Counters for logs and tests.
        self.node_patches = 0
        self.status_patches = 0

    def wake(self) -> None:
        """The devices changed: write them now instead of at the next interval."""
        self._wakeup.set()

    async def sync_node(self) -> bool:
        """Write the register annotation (and opt-in capacity) when the node does not show it yet."""
        snapshot = self._current()
        value = encode_node_devices(m.record for m in snapshot.managed)
        node = await self.kube.get_node(self.settings.node_name)
        changed = False
        if annotations_of(node).get(wire.NODE_NVIDIA_REGISTER) != value:
            await self.kube.patch_node_annotations(
                self.settings.node_name, {wire.NODE_NVIDIA_REGISTER: value}
            )
            self.node_patches += 1
            changed = True
            log.info("node_registered", node=self.settings.node_name, devices=len(snapshot.managed))
        if self.cfg.publish_extended_capacity:
            memory, cores = extended_capacity(snapshot.managed)
            wanted = {wire.RESOURCE_GPUMEM: str(memory), wire.RESOURCE_GPUCORES: str(cores)}
            status = node.get("status") or {}
            current = [status.get("capacity") or {}, status.get("allocatable") or {}]
            if any(section.get(k) != v for section in current for k, v in wanted.items()):
                await self.kube.patch_node_status(
                    self.settings.node_name, {"capacity": dict(wanted), "allocatable": dict(wanted)}
                )
                self.status_patches += 1
                changed = True
        return changed

    async def run(self) -> None:
        """The register loop; runs until cancelled."""
        while True:
            self._wakeup.clear()
            try:
                await self.sync_node()
                delay = self.cfg.register_interval_seconds
            except asyncio.CancelledError:
                raise
            except KUBE_ERRORS as exc:
                log.warning("node_register_failed", node=self.settings.node_name, error=str(exc))
                delay = self.cfg.register_retry_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
