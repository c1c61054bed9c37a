"""Kubernetes API calls on the caller's asyncio event loop (aiohttp), configured from the official client.

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
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from yarl import URL

__all__ = ["AsyncKube", "KubeConnectionError"]

_DEFAULT_TIMEOUT: Final = 30.0


class KubeConnectionError(ConnectionError):
    """The API server gave no answer (refused, reset, timed out, TLS failure)."""


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
    """Plain-JSON API calls over one aiohttp session, created on first use on the running event loop."""

    def __init__(
        self, configuration: client.Configuration, *, connections: int = 64, timeout: float = _DEFAULT_TIMEOUT
    ) -> None:
        self._configuration = configuration
        self._host = str(configuration.host).rstrip("/")
        self._ssl = ssl_context_of(configuration)
        self._connections = connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def host(self) -> str:
        return self._host

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to one loop (tests run several loops in one process).
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                ssl=self._ssl if self._ssl is not None else False,
                enable_cleanup_closed=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                skip_auto_headers=("User-Agent",),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # the API server sets no cookies worth keeping
            )
            self._loop = loop
        return self._session

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
        session = self._session_for_loop()
        data = None if body is None else orjson.dumps(body)
        headers = self._headers(content_type if body is not None else None)
        url = self._host + path + ("?" + urlencode(list(query)) if query else "")
        # Without a `timeout` of its own the session's applies (an explicit None would mean none at all).
        extra: dict[str, Any] = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        try:
            async with session.request(
                method,
                URL(url, encoded=True),  # `path` comes percent-encoded (`services.common.kube.core_path`)
                data=data,
                headers=headers,
                server_hostname=self._configuration.tls_server_name or None,
                **extra,
            ) as response:
                payload = await response.read()
                status, reason = response.status, response.reason or ""
                answer_headers = dict(response.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status <= 299:
            raise ApiException.from_response(
                http_resp=_Answer(status, reason, payload, answer_headers),
                body=payload.decode("utf-8", "replace"),
                data=None,
            )
        return orjson.loads(payload) if payload else None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
