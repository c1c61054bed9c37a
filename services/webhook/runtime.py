"""The running webhook: device config, TLS certificate (reloaded when its files change), the cluster caches
behind the quota and inventory checks, and the HTTP(S) server, until SIGTERM.

`run` is the process (`cli.main` hands it the parsed config). A config that cannot work (an invalid device
config or certificate, no API access while a check needs it, a busy listen address) exits with status 2.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from services.common.config import ConfigError, split_host_port
from services.common.device_config import DeviceConfig, load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, wait_for_shutdown
from services.common.kube import KubeAccessError, describe_access, new_api_client
from services.common.log import get_logger
from services.webhook.caches import WebhookCaches
from services.webhook.config import WebhookConfig
from services.webhook.mutate import MutationPolicy
from services.webhook.server import ClusterViews, NoViews, WebhookHandler, create_app
from services.webhook.tls import CertReloader, TLSConfigError

__all__ = ["policy_from_config", "run"]

log = get_logger("kube-vgpu-webhook")


def _config_error(event: str, error: str) -> SystemExit:
    log.error(event, error=error)
    return SystemExit(EXIT_CONFIG_ERROR)


def _load_device_config(cfg: WebhookConfig) -> DeviceConfig:
    try:
        device_config = load_device_config(cfg.device_config_file)
    except ConfigError as exc:
        raise _config_error("device_config_invalid", str(exc)) from None
    log.info("device_config_loaded", nvidia=device_config.nvidia.model_dump(by_alias=True))
    return device_config


def policy_from_config(cfg: WebhookConfig, device_config: DeviceConfig) -> MutationPolicy:
    return MutationPolicy(
        scheduler_name=cfg.scheduler_name,
        force_overwrite_default_scheduler=cfg.force_overwrite_default_scheduler,
        nvidia=device_config.nvidia,
        reject_unplaceable=cfg.reject_unplaceable,
    )


def _cert_reloader(cfg: WebhookConfig) -> CertReloader | None:
    if cfg.insecure_http:
        return None
    assert cfg.cert_file and cfg.key_file  # enforced by WebhookConfig
    reloader = CertReloader(cfg.cert_file, cfg.key_file)
    try:
        reloader.load()
    except TLSConfigError as exc:
        raise _config_error("tls_invalid", str(exc)) from None
    return reloader


def _start_caches(cfg: WebhookConfig, device_config: DeviceConfig) -> WebhookCaches | None:
    """The quota and inventory caches, watching the API (None when no check needs the API)."""
    if not cfg.needs_kube:
        return None
    try:
        api_client = new_api_client(cfg.kube)
    except KubeAccessError as exc:
        raise _config_error(
            "kube_unavailable",
            f"{exc} (or turn off quota_check and reject_unplaceable to run without the API)",
        ) from None
    log.info("kube_access", via=describe_access(cfg.kube))
    caches = WebhookCaches(
        api_client,
        mem_resource=device_config.nvidia.resource_memory_name,
        core_resource=device_config.nvidia.resource_core_name,
        quota=cfg.quota_check,
        inventory=cfg.reject_unplaceable,
        node_label_selector=cfg.node_label_selector,
        pod_label_selector=cfg.pod_label_selector,
        resync_period=cfg.resync_period or None,
    )
    caches.start()
    return caches


async def run(cfg: WebhookConfig) -> None:
    """The webhook process: serve admission reviews until SIGTERM/SIGINT, then stop in order."""
    device_config = _load_device_config(cfg)
    reloader = _cert_reloader(cfg)
    caches = _start_caches(cfg, device_config)
    views: ClusterViews = caches if caches is not None else NoViews()

    handler = WebhookHandler(policy_from_config(cfg, device_config), views, quota_check=cfg.quota_check)
    runner = web.AppRunner(create_app(handler), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    host, port = split_host_port(cfg.http_bind)
    host = host or "0.0.0.0"
    watcher: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, ssl_context=reloader.context if reloader else None)
        try:
            await site.start()
        except OSError as exc:
            raise _config_error("bind_failed", f"cannot listen on {cfg.http_bind}: {exc.strerror}") from None
        if reloader is not None:
            watcher = asyncio.create_task(reloader.watch(cfg.tls_reload_interval))
        log.info(
            "webhook_serving",
            address=[f"{a[0]}:{a[1]}" for a in runner.addresses],
            tls=reloader is not None,
            routes=["/webhook", "/mutate", "/healthz", "/readyz"],
        )
        await wait_for_shutdown()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()
        if caches is not None:
            await asyncio.to_thread(caches.stop)
        log.info("stopped")
