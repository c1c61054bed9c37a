"""Kubernetes client factory: kube-local URL, KUBECONFIG, or in-cluster, in that order."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config
from pydantic import Field

from services.common.config import ConfigModel

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeAccessError(RuntimeError):
    """No usable way to reach an API server; the message says what to set."""


class KubeAccess(ConfigModel):
    server: str | None = Field(
        None, description="API server URL without auth (kube-local), e.g. http://127.0.0.1:8001"
    )
    kubeconfig: str | None = Field(None, description="path of a kubeconfig file; default $KUBECONFIG")
    context: str | None = Field(None, description="kubeconfig context to use")


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


def list_raw(list_call: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
    """Items of a list call as plain JSON dicts."""
    items: list[dict[str, Any]] = raw_json(list_call, **kwargs).get("items") or []
    return items
