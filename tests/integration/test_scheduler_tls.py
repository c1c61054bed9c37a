"""The extender over HTTPS (kube-scheduler's `enableHTTPS`), with the certificate reloaded when rotated."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from services.scheduler.config import SchedulerConfig
from services.scheduler.runtime import SchedulerRuntime


def write_cert(ca: trustme.CA, cert: Path, key: Path) -> None:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def get(session: aiohttp.ClientSession, url: str, ca: trustme.CA) -> int:
    async with session.get(url, ssl=client_context(ca)) as resp:
        return resp.status


async def test_https_extender_reloads_a_rotated_certificate(kube_local_url: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first, second = trustme.CA(), trustme.CA()
    write_cert(first, cert, key)
    cfg = SchedulerConfig.model_validate(
        {
            "http_bind": "127.0.0.1:0",
            "metrics_bind_address": "127.0.0.1:0",
            "grpc_bind": "127.0.0.1:0",
            "cert_file": str(cert),
            "key_file": str(key),
            "kube": {"server": kube_local_url},
        }
    )
    runtime = SchedulerRuntime(cfg, tls_poll_seconds=3600)
    await runtime.start()
    url = f"https://127.0.0.1:{runtime.http_port}/healthz"
    try:
        async with aiohttp.ClientSession() as session:
            assert await get(session, url, first) == 200
            assert runtime.reload_tls() is False  # unchanged files: nothing to do
            write_cert(second, cert, key)
            assert runtime.reload_tls() is True
            assert await get(session, url, second) == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await get(session, url, first)
    finally:
        await runtime.stop()
