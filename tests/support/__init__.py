"""Helpers shared by the tests: free loopback ports and polling on the running event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sim.ports import free_port as free_port  # the one copy, shared with local mode and the control plane


async def poll_until(predicate: Callable[[], bool], what: str = "condition", timeout: float = 20.0) -> None:
    """Poll `predicate()` on the running loop until it is true; the timeout only guards against hangs (an
    AssertionError naming `what`), it never decides a result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
