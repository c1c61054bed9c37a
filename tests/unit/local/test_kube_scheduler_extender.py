"""The stand-in's extender client against a tiny in-process HTTP server: answers are read as Go reads them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sim.local.kube_scheduler_config import ExtenderConfig
from sim.local.kube_scheduler_extender import Extender, ExtenderError

Obj = dict[str, Any]
POD: Obj = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
    "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
}
NODES: list[Obj] = [{"metadata": {"name": n}} for n in ("n1", "n2", "n3")]


class Canned:
    def __init__(self) -> None:
        self.answer: Callable[[str, Obj], Any] = lambda verb, body: {}
        self.status = 200
        self.delay = 0.0
        self.received: list[tuple[str, Obj]] = []

    async def handle(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        body = await request.json()
        self.received.append((verb, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(self.answer(verb, body), status=self.status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Canned, str]]:
    canned = Canned()
    app = web.Application()
    app.router.add_post("/{verb}", canned.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield canned, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make(url: str, session: aiohttp.ClientSession, **fields: Any) -> Extender:
    doc = {"urlPrefix": url, "filterVerb": "filter", "bindVerb": "bind", "nodeCacheCapable": True, **fields}
    return Extender(ExtenderConfig.model_validate(doc), session)


async def test_interest_follows_managed_resources(server, session) -> None:
    _, url = server
    gpu = make(url, session, managedResources=[{"name": "nvidia.com/gpu", "ignoredByScheduler": True}])
    other = make(url, session, managedResources=[{"name": "example.com/fpga"}])
    everyone = make(url, session)
    assert gpu.interested(POD) and not other.interested(POD) and everyone.interested(POD)
    assert gpu.ignored == frozenset({"nvidia.com/gpu"}) and other.ignored == frozenset()


async def test_filter_reads_hami_answers_in_any_key_case(server, session) -> None:
    canned, url = server
    canned.answer = lambda verb, body: {
        "nodes": None,
        "nodenames": ["n2"],
        "failedNodes": {"n1": "no GPU"},
        "FAILEDANDUNRESOLVABLENODES": {"n3": "gone"},
        "error": "",
    }
    passed, failed, unresolvable = await make(url, session).filter(POD, NODES)
    assert (passed, failed, unresolvable) == (["n2"], {"n1": "no GPU"}, {"n3": "gone"})
    verb, body = canned.received[0]
    assert verb == "filter" and body == {"Pod": POD, "Nodes": None, "NodeNames": ["n1", "n2", "n3"]}


async def test_filter_errors(server, session) -> None:
    canned, url = server
    ext = make(url, session)
    canned.answer = lambda verb, body: {"NodeNames": None, "Error": "context cancelled"}
    with pytest.raises(ExtenderError, match=r"^context cancelled$"):
        await ext.filter(POD, NODES)
    canned.answer = lambda verb, body: {"NodeNames": ["elsewhere"], "Error": ""}
    with pytest.raises(ExtenderError, match="claims a filtered node 'elsewhere'"):
        await ext.filter(POD, NODES)
    canned.status = 500
    with pytest.raises(ExtenderError, match=rf"^failed filter with extender at URL {url}/filter, code 500$"):
        await ext.filter(POD, NODES)


async def test_http_timeout_is_honoured(server, session) -> None:
    canned, url = server
    canned.delay = 2.0
    ext = make(url, session, httpTimeout="300ms")
    started = time.monotonic()
    with pytest.raises(ExtenderError, match="context deadline exceeded"):
        await ext.filter(POD, NODES)
    assert time.monotonic() - started < 1.5


async def test_prioritize_and_bind_shapes(server, session) -> None:
    canned, url = server
    ext = make(url, session, prioritizeVerb="prioritize", weight=2, nodeCacheCapable=False)

    def answer(verb: str, body: Obj) -> Any:
        if verb == "prioritize":
            return [{"Host": "n1", "Score": 7}, {"host": "n2", "score": 3}]
        return {"Error": "node lock contention" if body["Node"] == "n2" else ""}

    canned.answer = answer
    assert await ext.prioritize(POD, NODES[:2]) == {"n1": 7, "n2": 3}
    assert canned.received[0][1] == {
        "Pod": POD,
        "Nodes": {"metadata": {}, "items": NODES[:2]},
        "NodeNames": None,
    }
    await ext.bind(POD, "n1")
    assert canned.received[1] == (
        "bind",
        {"PodName": "p", "PodNamespace": "ns", "PodUID": "u-1", "Node": "n1"},
    )
    with pytest.raises(ExtenderError, match="node lock contention"):
        await ext.bind(POD, "n2")
