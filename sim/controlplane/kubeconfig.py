"""Kubeconfig files for the real control plane: one cluster (its URL and our CA) and one user, either a
client certificate or a bearer token, so `kubectl --kubeconfig FILE` and the services need no other flag."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sim.controlplane.pki import CertificateFiles

CLUSTER_NAME = "kube-vgpu-real"


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    client: CertificateFiles | None = None,
    token: str | None = None,
) -> Path:
    """Write a kubeconfig authenticating as `client` (certificate) or `token`; mode 0600 since it holds
    credentials (or points at them). Returns `path`."""
    if (client is None) == (token is None):
        raise ValueError("a kubeconfig user needs exactly one of a client certificate or a token")
    credentials: dict[str, Any]
    if client is not None:
        credentials = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    else:
        credentials = {"token": token}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    return path
