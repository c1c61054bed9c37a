"""Kubernetes API calls on the caller's asyncio event loop, configured from the official client.

The official client is synchronous: every call from async code runs in a worker thread, where urllib3 and the
client's request building cost several times the request itself (and threads contend for the GIL with the
event loop). Hot paths that make a handful of plain JSON calls per operation (the scheduler's bind: node
lock, pod patch, Binding) use `AsyncKube` instead. It takes everything that matters from the same
`kubernetes.client.Configuration` that `services.common.kube.new_api_client` builds (server address, CA,
client certificate, `verify_ssl`, `tls_server_name`, the bearer token with its refresh hook, so in-cluster
token rotation keeps working), and answers like `services.common.kube.call_json`: the decoded JSON body, an
`ApiException` (the client's own subclasses: 404 `NotFoundException`, 409 `ConflictException`, ...) for a
non-2xx answer, and an `OSError` (`KubeConnectionError`) when no answer came. Callers keep their existing
error handling.

The HTTP/1.1 itself is `services.common.http_client`'s small keep-alive pool rather than aiohttp's client:
these calls are a large part of the extender's CPU per scheduled pod, and the lean client spends about half
the CPU per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.http_client import ConnectionPool, KubeConnectionError

__all__ = ["AsyncKube", "KubeConnectionError"]

_DEFAULT_TIMEOUT: Final = 30.0


class _Answer:
    """The parts of an HTTP answer `ApiException.from_response` reads (urllib3's response has the same)."""

    def __init__(self, status: int, reason: str, data: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.data = data
        self.headers = headers


def ssl_context_of(configuration: client.Configuration) -> ssl.SSLContext | None:
    """The TLS settings the official client's REST layer applies, as an `ssl.SSLContext` (None for http)."""
    if not str(configuration.host).startswith("https"):
        return None
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.ca_cert_data:
        data = configuration.ca_cert_data
        context.load_verify_locations(cadata=data if isinstance(data, str) else data.decode())
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


class AsyncKube:
    """Plain-JSON API calls over one connection pool, created on first use on the running event loop."""

    def __init__(
        self, configuration: client.Configuration, *, connections: int = 64, timeout: float = _DEFAULT_TIMEOUT
    ) -> None:
        self._configuration = configuration
        self._host = str(configuration.host).rstrip("/")
        self._ssl = ssl_context_of(configuration)
        self._connections = connections
        self._timeout = timeout
        url = urlsplit(self._host)
        self._address = (url.hostname or "localhost", url.port or (443 if url.scheme == "https" else 80))
        self._authority = url.netloc.rpartition("@")[2]
        self._prefix = url.path  # a server behind a path prefix (a proxy) keeps it on every call
        self._pool: ConnectionPool | None = None

    @property
    def host(self) -> str:
        return self._host

    def _pool_for_loop(self) -> ConnectionPool:
        pool = self._pool
        if pool is None or pool.closed or pool.loop is not asyncio.get_running_loop():
            # A pool belongs to one loop (tests run several loops in one process); one left on another
            # loop is closed as far as that is possible from here.
            if pool is not None:
                pool.abandon()
            pool = self._pool = ConnectionPool(
                *self._address,
                ssl=self._ssl,
                server_hostname=self._configuration.tls_server_name or None,
                authority=self._authority,
                limit=self._connections,
            )
        return pool

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "kube-vgpu"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        auth = self._configuration.auth_settings().get("BearerToken")  # runs the token refresh hook
        if auth is not None and auth.get("value"):
            headers["Authorization"] = str(auth["value"])
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """One call; the decoded JSON answer (None for an empty body). Raises `ApiException` for a non-2xx
        answer and `KubeConnectionError` when there was no answer."""
        pool = self._pool_for_loop()
        data = None if body is None else orjson.dumps(body)
        headers = self._headers(content_type if body is not None else None)
        # `path` comes percent-encoded (`services.common.kube.core_path`); the query is encoded here.
        target = self._prefix + path + ("?" + urlencode(list(query)) if query else "")
        response = await pool.request(
            method, target, headers, data, timeout=self._timeout if timeout is None else timeout
        )
        payload = response.body
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(
                http_resp=_Answer(response.status, response.reason, payload, response.headers),
                body=payload.decode("utf-8", "replace"),
                data=None,
            )
        return orjson.loads(payload) if payload else None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and not pool.closed:
            if pool.loop is asyncio.get_running_loop():
                await pool.close()
            else:
                pool.abandon()
