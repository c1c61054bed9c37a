"""Helpers shared by the tests: free loopback ports and polling on the running event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def poll_until(predicate: Callable[[], bool], what: str = "condition", timeout: float = 20.0) -> None:
    """Poll `predicate()` on the running loop until it is true; the timeout only guards against hangs (an
    AssertionError naming `what`), it never decides a result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
