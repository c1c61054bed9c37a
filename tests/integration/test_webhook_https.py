"""The webhook over real HTTPS: a test CA made with the openssl CLI, a verified handshake, certificate
hot reload, and admission end to end with quota and inventory read from kube-local through the reflectors."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client

from services.common.codecs import encode_node_devices
from services.common.config import KubeAccess
from services.common.kube import new_api_client
from services.common.model import DeviceInfo
from services.webhook.caches import WebhookCaches
from services.webhook.mutate import MutationPolicy
from services.webhook.server import WebhookHandler, create_app
from services.webhook.tls import CertReloader, TLSConfigError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

GPU, MEM = "nvidia.com/gpu", "nvidia.com/gpumem"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass
class CertAuthority:
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    def issue(self, common_name: str, cert: Path, key: Path) -> None:
        """A server certificate for 127.0.0.1/localhost signed by this CA, written to cert/key."""
        work = self.directory / common_name
        work.mkdir()
        (work / "ext.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "srv.key", "-out", "srv.csr", "-subj", f"/CN={common_name}",
            cwd=work,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", "srv.csr", "-CA", str(self.cert), "-CAkey", str(self.directory / "ca.key"),
            "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=work,
        )  # fmt: skip
        # Replace atomically, key first, the way a rotation tool would.
        for source, target in ((work / "srv.key", key), (work / "srv.crt", cert)):
            staged = target.with_suffix(".new")
            shutil.copyfile(source, staged)
            staged.replace(target)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    directory = tmp_path_factory.mktemp("ca")
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kube-vgpu test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )  # fmt: skip
    return CertAuthority(directory)


@pytest.fixture
def cert_files(ca: CertAuthority, tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    ca.issue(f"webhook-{tmp_path.name}", cert, key)
    return cert, key


def client_context(ca: CertAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert))  # verifies chain and hostname


@dataclass
class Running:
    url: str
    port: int
    reloader: CertReloader


@pytest.fixture
async def serve(cert_files: tuple[Path, Path]) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(handler: WebhookHandler, reload_interval: float = 0.05) -> Running:
        reloader = CertReloader(*cert_files)
        reloader.load()
        runner = web.AppRunner(create_app(handler), access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=reloader.context)
        await site.start()
        tasks.append(asyncio.create_task(reloader.watch(reload_interval)))
        port = runner.addresses[0][1]
        return Running(f"https://127.0.0.1:{port}", port, reloader)

    yield start
    for task in tasks:
        task.cancel()
    for runner in runners:
        await runner.cleanup()


async def peer_common_name(port: int, context: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    try:
        cert = writer.get_extra_info("peercert")
        return dict(item[0] for item in cert["subject"])["commonName"]
    finally:
        writer.close()
        await writer.wait_closed()


def review(obj: dict[str, Any], namespace: str = "default", uid: str = "u") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
        },
    }


def gpu_pod(name: str, **limits: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "default-scheduler",
            "containers": [{"name": "cuda", "image": "cuda:12", "resources": {"limits": limits}}],
        },
    }


async def test_verified_tls_handshake_and_admission(serve: Callable[..., Any], ca: CertAuthority) -> None:
    running = await serve(WebhookHandler(MutationPolicy()))
    context = client_context(ca)
    assert (await peer_common_name(running.port, context)).startswith("webhook-")
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url + "/healthz", ssl=context) as response:
            assert response.status == 200
        async with session.post(
            running.url + "/webhook", json=review(gpu_pod("p", **{GPU: "1"})), ssl=context
        ) as r:
            body = await r.json()
    assert body["response"]["allowed"] is True
    assert body["response"]["patchType"] == "JSONPatch"


async def test_untrusted_client_fails_the_handshake(serve: Callable[..., Any]) -> None:
    running = await serve(WebhookHandler(MutationPolicy()))
    with pytest.raises(ssl.SSLCertVerificationError):
        await peer_common_name(running.port, ssl.create_default_context())


async def test_replaced_certificate_is_served_to_new_connections(
    serve: Callable[..., Any], ca: CertAuthority, cert_files: tuple[Path, Path]
) -> None:
    running = await serve(WebhookHandler(MutationPolicy()))
    context = client_context(ca)
    before = await peer_common_name(running.port, context)
    ca.issue("webhook-rotated", *cert_files)
    deadline = time.monotonic() + 5
    while (name := await peer_common_name(running.port, context)) == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert name == "webhook-rotated"
    assert running.reloader.reloads == 1


async def test_a_broken_rotation_keeps_the_old_certificate(
    serve: Callable[..., Any], ca: CertAuthority, cert_files: tuple[Path, Path]
) -> None:
    running = await serve(WebhookHandler(MutationPolicy()))
    context = client_context(ca)
    before = await peer_common_name(running.port, context)
    cert, key = cert_files
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    await asyncio.sleep(0.3)
    assert not running.reloader.check()
    assert await peer_common_name(running.port, context) == before  # still served
    ca.issue("webhook-fixed", cert, key)
    deadline = time.monotonic() + 5
    while (name := await peer_common_name(running.port, context)) == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert name == "webhook-fixed"


def test_missing_or_mismatched_files_are_config_errors(ca: CertAuthority, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot read"):
        CertReloader(tmp_path / "nope.crt", tmp_path / "nope.key").load()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    ca.issue("one", first / "tls.crt", first / "tls.key")
    ca.issue("two", second / "tls.crt", second / "tls.key")
    with pytest.raises(TLSConfigError, match="not a usable PEM certificate and key"):
        CertReloader(first / "tls.crt", second / "tls.key").load()


# --- end to end: kube-local -> reflectors -> caches -> HTTPS admission ------------------------------------


def register(*memories: int) -> str:
    return encode_node_devices(
        DeviceInfo(f"GPU-{n}-{mem}", n, 10, mem, 100, "NVIDIA-A100", health=True)
        for n, mem in enumerate(memories)
    )


@pytest.fixture
def cluster(kube_local_url: str) -> Iterator[client.CoreV1Api]:
    api = new_api_client(KubeAccess(server=kube_local_url))
    core = client.CoreV1Api(api)
    for name, memories in (("gpu-small", (16384, 16384)), ("gpu-big", (40960,) * 4)):
        annotations = {"hami.io/node-nvidia-register": register(*memories)}
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, annotations=annotations)))
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="cpu-only")))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-b")))
    core.create_namespaced_resource_quota(
        "default",
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="gpu"),
            spec=client.V1ResourceQuotaSpec(
                hard={"limits.nvidia.com/gpumem": "20000", "limits.nvidia.com/gpucores": "300"}
            ),
        ),
    )
    running = {"hami.io/vgpu-node": "gpu-big"}
    core.create_namespaced_pod(
        "default",
        client.V1Pod(
            metadata=client.V1ObjectMeta(
                name="already-running",
                labels=running,
                annotations={**running, "hami.io/vgpu-devices-allocated": "GPU-0-40960,NVIDIA,8000,50:;"},
            ),
            spec=client.V1PodSpec(
                node_name="gpu-big", containers=[client.V1Container(name="c", image="cuda:12")]
            ),
        ),
    )
    yield core
    api.close()


async def wait_until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_end_to_end_quota_and_inventory(
    serve: Callable[..., Any], ca: CertAuthority, cluster: client.CoreV1Api, kube_local_url: str
) -> None:
    api = new_api_client(KubeAccess(server=kube_local_url))
    caches = WebhookCaches(api, watch_timeout=5)
    caches.start()
    try:
        assert await asyncio.to_thread(caches.wait_synced, 10)
        running = await serve(WebhookHandler(MutationPolicy(), caches))
        context = client_context(ca)
        async with aiohttp.ClientSession() as session:

            async def admit(obj: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
                async with session.post(
                    running.url + "/webhook", json=review(obj, namespace), ssl=context
                ) as r:
                    assert r.status == 200
                    return (await r.json())["response"]

            fits = await admit(gpu_pod("fits", **{GPU: "1", MEM: "12000"}))  # 8000 + 12000 <= 20000
            assert fits["allowed"] is True and fits["patchType"] == "JSONPatch"

            over = await admit(gpu_pod("over", **{GPU: "1", MEM: "13000"}))  # 8000 + 13000 > 20000
            assert (over["allowed"], over["status"]["message"]) == (False, "exceeding resource quota")
            assert "limits.nvidia.com/gpumem" in over["warnings"][0]

            elsewhere = await admit(gpu_pod("elsewhere", **{GPU: "1", MEM: "13000"}), namespace="team-b")
            assert elsewhere["allowed"] is True

            cores = await admit(gpu_pod("cores", **{GPU: "3"}))  # exclusive 3 x 100 + 50 > 300
            assert cores["status"]["message"] == "exceeding resource quota"

            huge = await admit(gpu_pod("huge", **{GPU: "1", MEM: "50000"}))
            assert huge["allowed"] is False
            assert huge["status"]["message"] == (
                "container cuda requests nvidia.com/gpumem 50000 MiB per GPU but the largest registered GPU "
                "has 40960 MiB"
            )
            many = await admit(gpu_pod("many", **{GPU: "8"}), namespace="team-b")
            assert many["status"]["message"] == (
                "container cuda requests 8 nvidia.com/gpu but the largest registered node has 4 GPUs"
            )

            # The caches follow the cluster: a finished pod frees quota, a new node widens the inventory.
            cluster.patch_namespaced_pod_status(
                "already-running", "default", {"status": {"phase": "Succeeded"}}
            )
            await wait_until(lambda: _allowed(admit(gpu_pod("later", **{GPU: "1", MEM: "13000"}))))
            annotations = {"hami.io/node-nvidia-register": register(*(81920,) * 8)}
            cluster.create_node(
                client.V1Node(metadata=client.V1ObjectMeta(name="gpu-huge", annotations=annotations))
            )
            await wait_until(lambda: _allowed(admit(gpu_pod("many", **{GPU: "8"}), namespace="team-b")))
            cluster.delete_namespaced_resource_quota("gpu", "default")
            await wait_until(lambda: _allowed(admit(gpu_pod("no-quota", **{GPU: "1", MEM: "80000"}))))

            async with session.get(running.url + "/readyz", ssl=context) as r:
                assert await r.json() == {
                    "status": "ok",
                    "quota_synced": True,
                    "inventory_synced": True,
                    "gpu_nodes": 3,
                }
    finally:
        await asyncio.to_thread(caches.stop)
        api.close()


async def _allowed(response: Any) -> bool:
    return bool((await response)["allowed"])
