"""The client factory picks kube-local URL, then kubeconfig, then in-cluster, and says what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import KubeAccess
from services.common.kube import KubeAccessError, describe_access, new_api_client

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster: {server: "https://10.1.2.3:6443", insecure-skip-tls-verify: true}
- name: c2
  cluster: {server: "https://10.9.9.9:6443", insecure-skip-tls-verify: true}
users:
- name: u1
  user: {token: secret-token}
contexts:
- name: one
  context: {cluster: c1, user: u1}
- name: two
  context: {cluster: c2, user: u1}
current-context: one
"""


def test_server_url_wins() -> None:
    api = new_api_client(KubeAccess(server="http://127.0.0.1:8001/"), environ={"KUBECONFIG": "/nope"})
    assert api.configuration.host == "http://127.0.0.1:8001"
    assert describe_access(KubeAccess(server="http://x")) == "server http://x"


def test_kubeconfig_from_env_and_context(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    api = new_api_client(KubeAccess(), environ={"KUBECONFIG": str(path)})
    assert api.configuration.host == "https://10.1.2.3:6443"
    api2 = new_api_client(KubeAccess(kubeconfig=str(path), context="two"), environ={})
    assert api2.configuration.host == "https://10.9.9.9:6443"
    assert describe_access(KubeAccess(), environ={"KUBECONFIG": str(path)}) == f"kubeconfig {path}"


def test_broken_kubeconfig_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeAccessError, match=str(path)):
        new_api_client(KubeAccess(kubeconfig=str(path)), environ={})


def test_nothing_configured_says_what_to_set() -> None:
    with pytest.raises(KubeAccessError, match=r"kube.server.*KUBECONFIG"):
        new_api_client(KubeAccess(), environ={})
    assert describe_access(KubeAccess(), environ={}) == "none"
