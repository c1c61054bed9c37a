"""Fixtures shared by the tests of services/common."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def no_loop_errors() -> AsyncIterator[None]:
    """Errors in protocol callbacks only reach the loop's exception handler: make them fail the test."""
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0.01)  # the callbacks of the connections closed last
    loop.set_exception_handler(None)
    assert errors == []
