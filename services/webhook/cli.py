"""`kube-vgpu-webhook`: the mutating admission webhook for GPU pods (HAMi's `/webhook`, spec section 4).

Serves `POST /webhook` (and `/mutate`), `GET /healthz` and `GET /readyz` over HTTPS (certificate reloaded
when its files change). It routes GPU pods to the HAMi scheduler, applies HAMi's defaults, and denies what
could never run: privileged GPU containers, pods bound in advance, requests beyond the namespace's GPU quota
or beyond any registered card.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiohttp import web

from services.common.config import ConfigError, split_host_port
from services.common.device_config import DeviceConfig, load_device_config
from services.common.entrypoint import EXIT_CONFIG_ERROR, run_service, wait_for_shutdown
from services.common.kube import KubeAccessError, describe_access, new_api_client
from services.common.log import get_logger
from services.webhook.caches import WebhookCaches
from services.webhook.config import ENV_PREFIX, WebhookConfig
from services.webhook.mutate import MutationPolicy
from services.webhook.server import ClusterViews, NoViews, WebhookHandler, create_app
from services.webhook.tls import CertReloader, TLSConfigError

PROG = "kube-vgpu-webhook"


def _config_error(event: str, error: str) -> SystemExit:
    get_logger(PROG).error(event, error=error)
    return SystemExit(EXIT_CONFIG_ERROR)


def _load_device_config(cfg: WebhookConfig) -> DeviceConfig:
    try:
        device_config = load_device_config(cfg.device_config_file)
    except ConfigError as exc:
        raise _config_error("device_config_invalid", str(exc)) from None
    get_logger(PROG).info("device_config_loaded", nvidia=device_config.nvidia.model_dump(by_alias=True))
    return device_config


def policy_from_config(cfg: WebhookConfig, device_config: DeviceConfig) -> MutationPolicy:
    return MutationPolicy(
        scheduler_name=cfg.scheduler_name,
        force_overwrite_default_scheduler=cfg.force_overwrite_default_scheduler,
        nvidia=device_config.nvidia,
        reject_unplaceable=cfg.reject_unplaceable,
    )


async def run(cfg: WebhookConfig) -> None:
    logger = get_logger(PROG)
    device_config = _load_device_config(cfg)

    reloader: CertReloader | None = None
    if not cfg.insecure_http:
        assert cfg.cert_file and cfg.key_file  # enforced by WebhookConfig
        reloader = CertReloader(cfg.cert_file, cfg.key_file)
        try:
            reloader.load()
        except TLSConfigError as exc:
            raise _config_error("tls_invalid", str(exc)) from None

    caches: WebhookCaches | None = None
    views: ClusterViews = NoViews()
    if cfg.needs_kube:
        try:
            api_client = new_api_client(cfg.kube)
        except KubeAccessError as exc:
            raise _config_error(
                "kube_unavailable",
                f"{exc} (or turn off quota_check and reject_unplaceable to run without the API)",
            ) from None
        logger.info("kube_access", via=describe_access(cfg.kube))
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
        views = caches

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
        logger.info(
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
        logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        WebhookConfig, run, prog=PROG, env_prefix=ENV_PREFIX, description=__doc__ or "", argv=argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
