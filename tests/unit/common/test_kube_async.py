"""`AsyncKube` against real servers: JSON answers, the client's ApiException subclasses for non-2xx, no answer
as `KubeConnectionError`, the request it writes (query, headers, body, host prefix), TLS settings taken from
the official client's Configuration (CA, SNI and hostname via `tls_server_name`), the bearer token's refresh
hook on every call, and one instance used from several event loops."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    ServiceException,
    UnprocessableEntityException,
)

from services.common.certs import issue_serving_certificate
from services.common.kube_async import AsyncKube, KubeConnectionError

MERGE = "application/merge-patch+json"


@pytest.fixture(autouse=True)
def _fail_on_loop_errors(no_loop_errors: None) -> None:
    """Every test here: see `no_loop_errors` (tests/unit/common/conftest.py)."""


class Recorder:
    """An aiohttp app that records each request and answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {"method": request.method, "raw_path": request.raw_path, "headers": request.headers, "body": body}
        )
        path = request.path
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            return web.json_response({"kind": "Status", "code": status, "reason": "Test"}, status=status)
        if path == "/empty":
            return web.Response(status=200)
        if path == "/big":  # big enough that a chunked answer is what a real API server would send
            return web.json_response({"items": [{"name": f"pod-{i}"} for i in range(200)]})
        return web.json_response({"kind": "Pod", "path": path})


@asynccontextmanager
async def serving(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def kube_on(recorder: Recorder, **kwargs: Any) -> AsyncIterator[AsyncKube]:
    async with serving(recorder.app) as port:
        kube = AsyncKube(client.Configuration(host=f"http://127.0.0.1:{port}"), **kwargs)
        try:
            yield kube
        finally:
            await kube.close()


async def test_json_answers_and_empty_body() -> None:
    recorder = Recorder()
    async with kube_on(recorder) as kube:
        assert await kube.request("GET", "/api/v1/namespaces/default/pods/p") == {
            "kind": "Pod",
            "path": "/api/v1/namespaces/default/pods/p",
        }
        assert await kube.request("DELETE", "/empty") is None
        big = await kube.request("GET", "/big")
        assert len(big["items"]) == 200


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, NotFoundException),
        (409, ConflictException),
        (422, UnprocessableEntityException),
        (500, ServiceException),
        (429, ApiException),
    ],
)
async def test_non_2xx_raises_the_clients_exception(status: int, kind: type[ApiException]) -> None:
    recorder = Recorder()
    async with kube_on(recorder) as kube:
        with pytest.raises(ApiException) as caught:
            await kube.request("PATCH", f"/status/{status}", body={"a": 1}, content_type=MERGE)
        # The connection is still good for the next call.
        assert (await kube.request("GET", "/ok"))["kind"] == "Pod"
    assert type(caught.value) is kind
    assert caught.value.status == status
    assert json.loads(str(caught.value.body))["code"] == status
    assert caught.value.headers is not None
    assert caught.value.headers["Content-Type"].startswith("application/json")


async def test_request_as_written() -> None:
    recorder = Recorder()
    async with kube_on(recorder) as kube:
        await kube.request(
            "GET",
            "/api/v1/namespaces/default/pods/a%3Ab",
            query=[("labelSelector", "app in (a,b)"), ("fieldSelector", "spec.nodeName=n1"), ("limit", "5")],
        )
        await kube.request("PATCH", "/api/v1/nodes/n1", body={"metadata": {"x": "ü"}}, content_type=MERGE)
        await kube.request("POST", "/api/v1/namespaces/default/events", body={"k": 1})
    get, patch, post = recorder.requests
    assert get["raw_path"] == (
        "/api/v1/namespaces/default/pods/a%3Ab"
        "?labelSelector=app+in+%28a%2Cb%29&fieldSelector=spec.nodeName%3Dn1&limit=5"
    )
    assert get["headers"]["Accept"] == "application/json"
    assert get["headers"]["User-Agent"] == "kube-vgpu"
    assert "Content-Type" not in get["headers"]
    assert "Authorization" not in get["headers"]
    assert patch["headers"]["Content-Type"] == MERGE
    assert orjson.loads(patch["body"]) == {"metadata": {"x": "ü"}}
    assert post["headers"]["Content-Type"] == "application/json"
    assert post["headers"]["Host"].startswith("127.0.0.1:")


async def test_host_with_a_path_prefix_keeps_it() -> None:
    recorder = Recorder()
    async with serving(recorder.app) as port:
        kube = AsyncKube(client.Configuration(host=f"http://127.0.0.1:{port}/k8s/clusters/c1/"))
        assert kube.host == f"http://127.0.0.1:{port}/k8s/clusters/c1"
        await kube.request("GET", "/api/v1/nodes", query=[("limit", "1")])
        await kube.close()
    assert recorder.requests[0]["raw_path"] == "/k8s/clusters/c1/api/v1/nodes?limit=1"


async def test_bearer_token_refresh_hook_runs_on_every_request() -> None:
    recorder = Recorder()
    calls = 0

    def refresh(configuration: client.Configuration) -> None:
        nonlocal calls
        calls += 1
        configuration.api_key["authorization"] = f"token-{calls}"

    async with serving(recorder.app) as port:
        configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
        configuration.api_key = {"authorization": "token-0"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
        kube = AsyncKube(configuration)
        for _ in range(3):
            await kube.request("GET", "/api/v1/nodes")
        await kube.close()
    assert calls == 3
    assert [r["headers"]["Authorization"] for r in recorder.requests] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-3",
    ]


async def test_no_answer_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        kube = AsyncKube(client.Configuration(host=f"http://127.0.0.1:{sock.getsockname()[1]}"))
        with pytest.raises(KubeConnectionError, match="GET /api/v1/nodes") as caught:
            await kube.request("GET", "/api/v1/nodes")
        await kube.close()
    assert isinstance(caught.value, OSError)


async def test_timeouts_per_call_and_by_default() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with serving(app) as port:
        configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
        kube = AsyncKube(configuration, timeout=0.1)
        with pytest.raises(KubeConnectionError, match=r"GET /slow: timed out after 0\.1s"):
            await kube.request("GET", "/slow")
        with pytest.raises(KubeConnectionError, match=r"timed out after 0\.05s"):
            await kube.request("GET", "/slow", timeout=0.05)
        await kube.close()


# --- TLS ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """CA, certificate and key for the name kube.test, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = issue_serving_certificate(["kube.test"]).write(folder / "good")
    other_ca, _, _ = issue_serving_certificate(["kube.test"]).write(folder / "other")
    return ca, cert, key, other_ca


@pytest.mark.parametrize(
    ("server_name", "trust", "verify", "error"),
    [
        ("kube.test", "good", True, None),
        (None, "good", True, "certificate verify failed"),  # the certificate does not name 127.0.0.1
        ("other.test", "good", True, "certificate verify failed"),
        ("kube.test", "other", True, "certificate verify failed"),
        (None, "other", False, None),  # verify_ssl off, as the official client would
    ],
    ids=["sni-name-ok", "ip-not-in-certificate", "wrong-name", "unknown-ca", "verify-off"],
)
async def test_tls_from_the_configuration(
    certificates: tuple[Path, Path, Path, Path],
    server_name: str | None,
    trust: str,
    verify: bool,
    error: str | None,
) -> None:
    ca, cert, key, other_ca = certificates
    sni: list[str | None] = []
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda _sock, name, _ctx: sni.append(name)  # type: ignore[assignment,misc]
    recorder = Recorder()
    async with serving(recorder.app, server_context) as port:
        configuration = client.Configuration(host=f"https://127.0.0.1:{port}")
        configuration.ssl_ca_cert = str(ca if trust == "good" else other_ca)
        configuration.tls_server_name = server_name
        configuration.verify_ssl = verify
        kube = AsyncKube(configuration)
        if error is None:
            for _ in range(2):
                assert (await kube.request("GET", "/api"))["kind"] == "Pod"
        else:
            with pytest.raises(KubeConnectionError, match=error):
                await kube.request("GET", "/api")
        await kube.close()
    assert sni[:1] == ([server_name] if server_name else [None])
    if error is None:
        assert len(sni) == 1  # one handshake: the second call reused the connection
        assert recorder.requests[0]["headers"]["Host"] == f"127.0.0.1:{port}"


# --- several event loops ------------------------------------------------------------------------------------


@pytest.fixture
def threaded_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_one_instance_serves_several_event_loops(threaded_server: int) -> None:
    kube = AsyncKube(client.Configuration(host=f"http://127.0.0.1:{threaded_server}"))

    async def twice(n: int) -> list[Any]:
        return [await kube.request("GET", f"/loop/{n}"), await kube.request("GET", f"/loop/{n}")]

    assert asyncio.run(twice(1)) == [{"path": "/loop/1"}] * 2
    # A new loop: the pool of the first (closed) loop is left behind, a new one made.
    assert asyncio.run(twice(2)) == [{"path": "/loop/2"}] * 2

    async def close() -> None:
        await kube.close()

    asyncio.run(close())
