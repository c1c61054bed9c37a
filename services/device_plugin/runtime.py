"""The device plugin process: settings, API access, the probe server, the plugin (retried while there is
no usable GPU) and a clean stop on SIGTERM.

Serves health/reflection on `grpc_bind` for probes (service "v1beta1.DevicePlugin" turns SERVING once the
kubelet accepted our registration). GPUs come from the backend the caller's factory builds: NVML in the
product, simulated GPUs in `kube-vgpu-sim-device-plugin` (local mode). Without a usable GPU it keeps
retrying every `start_retry_seconds`, as HAMi's plugin does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from services.common.config import ConfigError
from services.common.device_config import load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, wait_for_shutdown
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.kube import KubeAccessError, describe_access, new_api_client
from services.common.log import bind_context, get_logger
from services.device_plugin.config import (
    DevicePluginConfig,
    PluginSettings,
    effective_settings,
    load_node_override,
)
from services.device_plugin.gpu import GpuBackend, GpuBackendError
from services.device_plugin.kubelet import SERVICE_NAME
from services.device_plugin.kubeops import KubeOps
from services.device_plugin.nvml import NvmlBackend
from services.device_plugin.plugin import DevicePlugin

log = get_logger("kube-vgpu-device-plugin")

# Builds the GPU backend for a config; called in a worker thread, again on every start retry.
BackendFactory = Callable[[DevicePluginConfig], GpuBackend]


def nvml_backend(cfg: DevicePluginConfig) -> GpuBackend:
    """The product's backend: the node's real GPUs through NVML."""
    return NvmlBackend()


def load_settings(cfg: DevicePluginConfig) -> PluginSettings:
    device_config = load_device_config(cfg.device_config_file)
    override = load_node_override(cfg.node_config_file, cfg.node_name)
    settings = effective_settings(
        cfg.node_name,
        device_config.nvidia,
        override,
        resource_name=cfg.resource_name,
        preferred_allocation=cfg.preferred_allocation,
    )
    log.info("settings_loaded", node_override=override is not None, **_settings_log(settings))
    return settings


def _settings_log(settings: PluginSettings) -> Mapping[str, object]:
    return {
        "resource": settings.resource_name,
        "split": settings.split_count,
        "memory_scaling": settings.memory_scaling,
        "core_scaling": settings.core_scaling,
        "mode": settings.operating_mode,
        "preferred_allocation": settings.preferred_allocation,
    }


async def _start_plugin(
    cfg: DevicePluginConfig,
    settings: PluginSettings,
    kube: KubeOps,
    probe: GrpcServerHandle,
    stop: asyncio.Event,
    backend_factory: BackendFactory,
) -> DevicePlugin | None:
    """Start the plugin, retrying while there is no usable GPU; None when asked to stop first."""
    while not stop.is_set():
        backend: GpuBackend | None = None
        try:
            backend = await asyncio.to_thread(backend_factory, cfg)
            plugin = DevicePlugin(cfg, settings, backend, kube, probe=probe)
            await plugin.start()
            return plugin
        except (GpuBackendError, OSError) as exc:
            log.error("device_plugin_start_failed", error=str(exc), retry_in_s=cfg.start_retry_seconds)
            if backend is not None:
                backend.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=cfg.start_retry_seconds)
    return None


async def run(cfg: DevicePluginConfig, *, backend_factory: BackendFactory = nvml_backend) -> None:
    """Run the plugin until SIGTERM/SIGINT; exits with status 2 on a bad device or node config."""
    bind_context(node=cfg.node_name)
    try:
        settings = load_settings(cfg)
        api = new_api_client(cfg.kube)
    except (ConfigError, KubeAccessError) as exc:
        log.error("config_invalid", error=str(exc))
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    log.info("kube_access", source=describe_access(cfg.kube))
    kube = KubeOps(api)
    probe = build_server([], cfg.grpc_bind)
    await probe.start()
    await probe.set_serving(SERVICE_NAME, False)
    log.info("grpc_serving", address=probe.target)
    stop = asyncio.Event()
    waiter = asyncio.create_task(wait_for_shutdown())
    waiter.add_done_callback(lambda _t: stop.set())
    plugin: DevicePlugin | None = None
    try:
        plugin = await _start_plugin(cfg, settings, kube, probe, stop, backend_factory)
        await stop.wait()
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        if plugin is not None:
            await plugin.stop()
        await probe.stop(grace=2.0)
        api.close()  # type: ignore[no-untyped-call]
        log.info("stopped")
