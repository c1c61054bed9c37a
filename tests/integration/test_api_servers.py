"""The two-server fixture itself: both servers answer the official client, the real one enforces the
deploy's RBAC for a service's access, and what one test makes is gone before the next."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.kube import new_api_client
from tests.support.apiservers import ApiServer

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fixture-node"}}


def test_admin_creates_and_service_account_rights_hold(api_server: ApiServer) -> None:
    with api_server.api_client() as api:
        core = client.CoreV1Api(api)
        assert not [n for n in core.list_node().items if n.metadata.name == "fixture-node"]
        core.create_node(NODE)
        core.create_namespace({"metadata": {"name": "fixture-ns"}})
    with new_api_client(api_server.service_access("kube-vgpu-webhook")) as api:
        core = client.CoreV1Api(api)
        assert [n.metadata.name for n in core.list_node().items] == ["fixture-node"]
        if api_server.kind == "real":
            # The deploy gives the webhook read access to nodes, never write access.
            with pytest.raises(ApiException) as denied:
                core.patch_node("fixture-node", {"metadata": {"labels": {"x": "y"}}})
            assert denied.value.status == 403


def test_the_previous_test_left_nothing_behind(api_server: ApiServer) -> None:
    with api_server.api_client() as api:
        core = client.CoreV1Api(api)
        assert not [n for n in core.list_node().items if n.metadata.name == "fixture-node"]
        assert "fixture-ns" not in {ns.metadata.name for ns in core.list_namespace().items}
