"""Blocking Kubernetes client calls, run off the event loop on the scheduler's own thread pool.

`asyncio.to_thread` uses the loop's default executor, which holds only `min(32, cpus + 4)` threads: on a small
node a burst of binds (each a handful of API calls) would queue behind one another there. This pool is sized
for API calls that mostly wait on the network, and keeps the structlog context of the caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

__all__ = ["API_THREADS", "offload"]

P = ParamSpec("P")
T = TypeVar("T")

API_THREADS: Final = 32

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube-api")
        return _executor


async def offload(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`await offload(core.read_node, name)`: run `fn` in the API thread pool with the caller's context."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(_pool(), call)
