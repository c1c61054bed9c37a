"""The kube-scheduler stand-in's extender client: which pods an extender wants, and its filter / prioritize /
bind calls over HTTP(S), with answers read as kube-scheduler's Go code reads them.

``managedResources`` decides interest (all pods when it lists none); ``nodeCacheCapable`` sends node names
instead of full nodes; ``tlsConfig`` / ``enableHTTPS`` build the TLS context. A failed call or an answer
with ``Error`` raises :class:`ExtenderError`, worded as kube-scheduler words it; whether that fails the
attempt is the scheduling loop's decision (``kube_scheduler.py``).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from sim.local.kube_scheduler_config import ExtenderConfig, TLSConfig
from sim.local.kube_scheduler_fit import list_or_empty, name_of, object_meta, requests_any

Obj = dict[str, Any]


class ExtenderError(Exception):
    """An extender call failed or the extender answered with ``Error``."""


def _lower_keys(value: Any) -> Any:
    """Go decoders match JSON keys case-insensitively; so do we."""
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, Mapping) else value


class Extender:
    """One configured extender: which pods it wants and its filter / prioritize / bind calls."""

    def __init__(self, config: ExtenderConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self._session = session
        self._ssl: ssl.SSLContext | bool | None = None
        self.managed = frozenset(r.name for r in config.managed_resources)
        self.ignored = frozenset(r.name for r in config.managed_resources if r.ignored_by_scheduler)

    @property
    def name(self) -> str:
        return self.config.url_prefix

    def interested(self, pod: Mapping[str, Any]) -> bool:
        return not self.managed or requests_any(pod, self.managed)

    def _ssl_setting(self) -> ssl.SSLContext | bool | None:
        if self._ssl is not None or not self.config.url_prefix.startswith("https://"):
            return self._ssl
        tls = self.config.tls_config or TLSConfig.model_validate({})
        has_ca = bool(tls.ca_file or tls.ca_data)
        if tls.insecure or (self.config.enable_https and not has_ca):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            cadata = base64.b64decode(tls.ca_data).decode() if tls.ca_data else None
            context = ssl.create_default_context(cafile=tls.ca_file or None, cadata=cadata)
        if tls.cert_file or tls.cert_data:
            self._load_client_cert(context, tls)
        self._ssl = context
        return context

    @staticmethod
    def _load_client_cert(context: ssl.SSLContext, tls: TLSConfig) -> None:
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file or None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert.write_bytes(base64.b64decode(tls.cert_data))
            key.write_bytes(base64.b64decode(tls.key_data))
            context.load_cert_chain(str(cert), str(key))

    async def _send(self, verb: str, body: Any) -> Any:
        url = f"{self.config.url_prefix}/{verb}"
        try:
            setting = self._ssl_setting()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ExtenderError(f"extender {self.name}: bad tlsConfig: {exc}") from None
        kwargs: dict[str, Any] = {}
        if setting is not None:
            kwargs["ssl"] = setting
        tls = self.config.tls_config
        if tls is not None and tls.server_name and url.startswith("https://"):
            kwargs["server_hostname"] = tls.server_name
        try:
            async with self._session.post(
                url,
                data=json.dumps(body, separators=(",", ":")),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.config.http_timeout),
                **kwargs,
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ExtenderError(
                f'Post "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
            ) from None
        except aiohttp.ClientConnectorError as exc:
            errno = exc.os_error.errno
            reason = os.strerror(errno).lower() if errno else str(exc.os_error)
            raise ExtenderError(f'Post "{url}": dial tcp {exc.host}:{exc.port}: connect: {reason}') from None
        except aiohttp.ClientError as exc:
            raise ExtenderError(f'Post "{url}": {type(exc).__name__}: {exc}') from None
        if status != 200:
            raise ExtenderError(f"failed {verb} with extender at URL {url}, code {status}")
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ExtenderError(f"extender at URL {url} answered {verb} with invalid JSON: {exc}") from None

    def _args(self, pod: Obj, nodes: Sequence[Obj]) -> Obj:
        if self.config.node_cache_capable:
            return {"Pod": pod, "Nodes": None, "NodeNames": [name_of(n) for n in nodes]}
        return {"Pod": pod, "Nodes": {"metadata": {}, "items": list(nodes)}, "NodeNames": None}

    async def filter(
        self, pod: Obj, nodes: Sequence[Obj]
    ) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """(names that pass, FailedNodes, FailedAndUnresolvableNodes)."""
        result = _lower_keys(await self._send(self.config.filter_verb, self._args(pod, nodes)))
        if not isinstance(result, dict):
            raise ExtenderError(f"extender {self.name}: filter answer is not an object")
        if result.get("error"):
            raise ExtenderError(str(result["error"]))
        names: list[str] = []
        if self.config.node_cache_capable and result.get("nodenames") is not None:
            names = [str(n) for n in list_or_empty(result.get("nodenames"))]
        elif isinstance(result.get("nodes"), Mapping):
            items = _lower_keys(result["nodes"]).get("items")
            names = [name_of(n) for n in list_or_empty(items) if isinstance(n, Mapping)]
        known = {name_of(n) for n in nodes}
        for name in names:
            if name not in known:
                raise ExtenderError(
                    f"extender {self.name} claims a filtered node {name!r} "
                    "which is not found in the input node list"
                )

        def reason_map(key: str) -> dict[str, str]:
            value = result.get(key)
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}

        return names, reason_map("failednodes"), reason_map("failedandunresolvablenodes")

    async def prioritize(self, pod: Obj, nodes: Sequence[Obj]) -> dict[str, int]:
        result = await self._send(self.config.prioritize_verb, self._args(pod, nodes))
        if not isinstance(result, list):
            raise ExtenderError(f"extender {self.name}: prioritize answer is not a list of HostPriority")
        scores: dict[str, int] = {}
        for entry in result:
            entry = _lower_keys(entry)
            if isinstance(entry, dict) and isinstance(entry.get("host"), str):
                score = entry.get("score")
                scores[entry["host"]] = int(score) if isinstance(score, int | float) else 0
        return scores

    async def bind(self, pod: Obj, node: str) -> None:
        md = object_meta(pod)
        body = {
            "PodName": md.get("name"),
            "PodNamespace": md.get("namespace"),
            "PodUID": md.get("uid"),
            "Node": node,
        }
        result = _lower_keys(await self._send(self.config.bind_verb, body))
        if isinstance(result, dict) and result.get("error"):
            raise ExtenderError(str(result["error"]))
