"""The aiohttp app over plain HTTP: routes, body limit, content type, malformed bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from webhook_builders import gpu_ctr, pod, review

from services.webhook.mutate import MutationPolicy
from services.webhook.server import MAX_BODY_BYTES, WebhookHandler, create_app


class Views:
    def quota_view(self, namespace: str) -> Any:
        return None

    def inventory(self) -> Any:
        return None

    def status(self) -> dict[str, Any]:
        return {"quota_synced": True, "inventory_synced": False}


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(WebhookHandler(MutationPolicy(), Views()))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/webhook", "/mutate"])
async def test_admission_routes(client: TestClient[Any, Any], path: str) -> None:
    response = await client.post(path, json=review(pod(gpu_ctr(gpu="1")), uid="abc"))
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["response"]["uid"] == "abc"
    assert body["response"]["patchType"] == "JSONPatch"


async def test_health_and_readiness(client: TestClient[Any, Any]) -> None:
    healthz = await client.get("/healthz")
    assert (healthz.status, await healthz.text()) == (200, "ok")
    readyz = await client.get("/readyz")
    assert readyz.status == 200
    assert await readyz.json() == {"status": "ok", "quota_synced": True, "inventory_synced": False}


async def test_malformed_json_is_400_with_a_message(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/webhook", data=b'{"apiVersion": ', headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    body = await response.json()
    assert "not valid JSON" in body["response"]["status"]["message"]


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_1_mib_is_413(client: TestClient[Any, Any], chunked: bool) -> None:
    payload = b" " * (MAX_BODY_BYTES + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    response = await client.post(
        "/webhook",
        data=chunks() if chunked else payload,
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    body = await response.json()
    assert "larger than 1048576 bytes" in body["response"]["status"]["message"]


async def test_body_of_exactly_1_mib_is_read(client: TestClient[Any, Any]) -> None:
    document = json.dumps(review(pod(gpu_ctr(gpu="1")))).encode()
    payload = document + b" " * (MAX_BODY_BYTES - len(document))
    response = await client.post("/webhook", data=payload, headers={"Content-Type": "application/json"})
    assert response.status == 200


async def test_wrong_content_type_is_415(client: TestClient[Any, Any]) -> None:
    response = await client.post("/webhook", data=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status == 415
    assert "expected application/json" in (await response.json())["response"]["status"]["message"]


async def test_unknown_route_and_method(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/nope")).status == 404
    assert (await client.get("/webhook")).status == 405


async def test_server_keeps_serving_after_garbage(client: TestClient[Any, Any]) -> None:
    for garbage in (b"\x00\x01", b"[]", b"{}", b"null", b'"x"'):
        response = await client.post("/webhook", data=garbage, headers={"Content-Type": "application/json"})
        assert response.status == 400
    assert (await client.get("/healthz")).status == 200
