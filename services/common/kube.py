"""Kubernetes client factory: kube-local URL, KUBECONFIG, or in-cluster, in that order."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from services.common.config import KubeAccess

# What a call to the API server can raise: an answer with an error status, or no answer at all (refused,
# reset, timed out). Long-running loops catch these, log, and retry with backoff.
KUBE_ERRORS: tuple[type[BaseException], ...] = (ApiException, OSError, urllib3.exceptions.HTTPError)

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeAccessError(RuntimeError):
    """No usable way to reach an API server; the message says what to set."""


def describe_access(access: KubeAccess, environ: Mapping[str, str] | None = None) -> str:
    """Which source `new_api_client` would use, for the start-up log line."""
    environ = os.environ if environ is None else environ
    if access.server:
        return f"server {access.server}"
    kubeconfig = access.kubeconfig or environ.get("KUBECONFIG")
    if kubeconfig:
        return f"kubeconfig {kubeconfig}"
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster service account"
    return "none"


def new_api_client(access: KubeAccess, environ: Mapping[str, str] | None = None) -> client.ApiClient:
    environ = os.environ if environ is None else environ
    configuration = client.Configuration()
    if access.server:
        configuration.host = access.server.rstrip("/")
    else:
        kubeconfig = access.kubeconfig or environ.get("KUBECONFIG")
        if kubeconfig:
            try:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=access.context, client_configuration=configuration
                )
            except (config.ConfigException, OSError) as exc:
                raise KubeAccessError(f"cannot load kubeconfig {kubeconfig}: {exc}") from exc
        elif environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_TOKEN.exists():
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            raise KubeAccessError(
                "no Kubernetes API to talk to: set kube.server (e.g. the kube-local URL), "
                "kube.kubeconfig or $KUBECONFIG, or run inside a pod with a service account"
            )
    return client.ApiClient(configuration)


def raw_json(call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call a client method with `_preload_content=False` and decode its JSON body: skips the client's slow
    model decoding, and works for answers it cannot decode (the Status that pods/binding returns)."""
    response = call(*args, _preload_content=False, **kwargs)
    return json.loads(response.data)


def core_path(resource: str, name: str = "", *, namespace: str = "", subresource: str = "") -> str:
    """The core/v1 URL path of `resource` (plural), one object of it, or its subresource; the parts are
    percent-encoded, so a name taken from a request cannot reach another path."""
    path = "/api/v1"
    if namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{resource}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def call_json(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Sequence[tuple[str, str]] = (),
    body: Any = None,
    content_type: str = "application/json",
    timeout: float | None = None,
) -> Any:
    """One API call through the official client's auth and REST layer, answer decoded as plain JSON.

    The generated `CoreV1Api` methods validate every argument with pydantic on each call, which costs more
    than the request itself on the scheduler's bind path (several calls per pod at hundreds of pods per
    second). This sends the same request (`param_serialize` applies the configured token and TLS) without
    that step. Raises `ApiException` for a non-2xx answer, as the generated methods do."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    request = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=timeout)
    data = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return json.loads(data) if data else None


def list_raw(list_call: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
    """Items of a list call as plain JSON dicts."""
    items: list[dict[str, Any]] = raw_json(list_call, **kwargs).get("items") or []
    return items
