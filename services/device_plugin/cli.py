"""`kube-vgpu-device-plugin`: the per-node device plugin (kubelet Device Plugin API v1beta1).

Serves health/reflection on `grpc_bind` for probes (service "v1beta1.DevicePlugin" turns SERVING once the
kubelet accepted our registration), discovers GPUs (NVML, or a simulated inventory), serves the kubelet
API on `<plugin_dir>/nvidia-gpu.sock`, registers with the kubelet and keeps the node's
`hami.io/node-nvidia-register` annotation current. Without a usable GPU it keeps retrying every
`start_retry_seconds`, as HAMi's plugin does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence

from services.common.config import ConfigError, apply_env_aliases
from services.common.device_config import load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, run_service, wait_for_shutdown
from services.common.grpc_server import GrpcServerHandle, build_server
from services.common.kube import KubeAccessError, describe_access, new_api_client
from services.common.log import bind_context, get_logger
from services.device_plugin.config import ENV_PREFIX, HAMI_ENV_ALIASES, DevicePluginConfig
from services.device_plugin.gpu import GpuBackend, GpuBackendError
from services.device_plugin.kubeops import KubeOps
from services.device_plugin.service import SERVICE_NAME, DevicePlugin
from services.device_plugin.settings import PluginSettings, effective_settings, load_node_override

PROG = "kube-vgpu-device-plugin"
log = get_logger(PROG)


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


def make_backend(cfg: DevicePluginConfig) -> GpuBackend:
    if cfg.backend == "simulated":
        from sim.gpus.backend import SimulatedBackend

        assert cfg.simulated_inventory is not None  # the config validator guarantees it
        return SimulatedBackend(cfg.simulated_inventory, cfg.node_name, cfg.simulated_events_file)
    from services.device_plugin.nvml import NvmlBackend

    return NvmlBackend()


async def _start_plugin(
    cfg: DevicePluginConfig,
    settings: PluginSettings,
    kube: KubeOps,
    probe: GrpcServerHandle,
    stop: asyncio.Event,
) -> DevicePlugin | None:
    """Start the plugin, retrying while there is no usable GPU; None when asked to stop first."""
    while not stop.is_set():
        backend: GpuBackend | None = None
        try:
            backend = await asyncio.to_thread(make_backend, cfg)
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


async def run(cfg: DevicePluginConfig) -> None:
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
        plugin = await _start_plugin(cfg, settings, kube, probe, stop)
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


def main(argv: Sequence[str] | None = None) -> int:
    apply_env_aliases(os.environ, HAMI_ENV_ALIASES, ENV_PREFIX)
    return run_service(
        DevicePluginConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
