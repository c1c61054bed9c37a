"""`ConnectionPool` over real loopback sockets: answer framing, keep-alive reuse, the pool limit, stale and
reset connections, timeouts, cancellation and close. Edge cases use a raw asyncio server that writes exact
bytes; the ordinary cases an aiohttp web server."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from services.common.http_client import ConnectionPool, KubeConnectionError
from tests.support import poll_until

TIMEOUT = 5.0


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


# A reply: the bytes to write, or None to reset the connection without answering.
Reply = Callable[[int, int, Received], Awaitable[bytes | None]]


@dataclass
class RawServer:
    """Reads requests off each connection and writes whatever `reply(connection, index, request)` says;
    with `close_after` it closes the connection after every answer, whatever the answer's headers say."""

    reply: Reply
    close_after: bool = False
    trickle: bool = False  # write the answer a few bytes at a time, so it arrives in pieces
    connections: int = 0
    open_now: int = 0
    receipts: list[Received] = field(default_factory=list)
    port: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.open_now += 1
        self._writers.add(writer)
        try:
            for index in range(1_000_000):
                request = await read_request(reader)
                if request is None:
                    return
                self.receipts.append(request)
                answer = await self.reply(number, index, request)
                if answer is None:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()  # RST, no answer
                    return
                if self.trickle:
                    for at in range(0, len(answer), 3):
                        writer.write(answer[at : at + 3])
                        await writer.drain()
                        await asyncio.sleep(0.001)
                else:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        finally:
            self.open_now -= 1
            self._writers.discard(writer)
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RawServer]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.sleep(0)


async def read_request(reader: asyncio.StreamReader) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Received(method, target, headers, body)


@pytest.fixture(autouse=True)
def _fail_on_loop_errors(no_loop_errors: None) -> None:
    """Every test here: see `no_loop_errors` (tests/unit/common/conftest.py)."""


def fixed(answer: bytes) -> Reply:
    async def reply(connection: int, index: int, request: Received) -> bytes | None:
        return answer

    return reply


@asynccontextmanager
async def web_server(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def pool_for(port: int, limit: int = 8) -> ConnectionPool:
    return ConnectionPool("127.0.0.1", port, limit=limit)


async def get(
    pool: ConnectionPool, target: str = "/", timeout: float = TIMEOUT, method: str = "GET"
) -> bytes:
    response = await pool.request(method, target, {"Accept": "application/json"}, timeout=timeout)
    return response.body


# --- answer framing ---------------------------------------------------------------------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    b'5;name=value\r\nhello\r\n6\r\n world\r\nA ; x="y"\r\n, chunked!\r\n'
    b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "in-pieces"])
@pytest.mark.parametrize(
    ("answer", "close_after", "status", "body", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", False, 200, b"hello", True),
        (b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 0\r\n\r\n", False, 200, b"", True),
        (CHUNKED, False, 200, b"hello world, chunked!", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False, 200, b"", True),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            False,
            201,
            b"ok",
            True,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", False, 304, b"", True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnil", False, 404, b"nil", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", True, 200, b"ok", False),
        # Nothing delimits the body but the server closing the connection.
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", True, 200, b"to the end", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, 200, b"ok", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", False, 200, b"", True),
    ],
    ids=[
        "content-length",
        "empty-body",
        "chunked-with-extensions-and-trailers",
        "chunked-empty",
        "1xx-skipped",
        "204",
        "304",
        "404",
        "connection-close",
        "read-to-eof",
        "http1.0",
        "http1.0-keep-alive",
    ],
)
async def test_answer_framing(
    answer: bytes, close_after: bool, status: int, body: bytes, reused: bool, trickle: bool
) -> None:
    server = RawServer(fixed(answer), close_after=close_after, trickle=trickle)
    async with server.running():
        pool = pool_for(server.port)
        for _ in range(3):
            response = await pool.request("GET", "/x", {}, timeout=TIMEOUT)
            assert (response.status, response.body) == (status, body)
        await pool.close()
    assert server.connections == (1 if reused else 3)
    assert len(server.receipts) == 3


async def test_headers_are_case_insensitive_and_repeated_fields_join() -> None:
    answer = b"HTTP/1.1 200 Fine Thanks\r\nX-Many: a\r\nx-many: b\r\nContent-Length: 0\r\n\r\n"
    server = RawServer(fixed(answer))
    async with server.running():
        pool = pool_for(server.port)
        response = await pool.request("GET", "/", {}, timeout=TIMEOUT)
        await pool.close()
    assert response.reason == "Fine Thanks"
    assert response.headers["X-MANY"] == response.headers.get("x-many") == "a, b"
    assert "Content-Length" in response.headers


async def test_head_answer_has_no_body_despite_its_content_length() -> None:
    server = RawServer(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"))
    async with server.running():
        pool = pool_for(server.port)
        for _ in range(2):
            response = await pool.request("HEAD", "/", {}, timeout=TIMEOUT)
            assert (response.status, response.body) == (200, b"")
        await pool.close()
    assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the server closes
    ],
    ids=["bad-chunk-size", "chunk-overrun", "bad-length", "not-http", "bad-header", "truncated"],
)
async def test_malformed_or_truncated_answer_is_a_connection_error(answer: bytes) -> None:
    server = RawServer(fixed(answer), close_after=True)
    async with server.running():
        pool = pool_for(server.port)
        with pytest.raises(KubeConnectionError, match="GET /bad"):
            await pool.request("GET", "/bad", {}, timeout=TIMEOUT)
        await pool.close()


# --- the request ------------------------------------------------------------------------------------------


async def test_request_head_and_body_as_sent() -> None:
    server = RawServer(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    async with server.running():
        pool = ConnectionPool("127.0.0.1", server.port, authority="api.example:6443")
        await pool.request("PATCH", "/a%2Fb?x=1", {"Content-Type": "text/plain"}, b"payload", timeout=TIMEOUT)
        await pool.request("POST", "/empty", {}, timeout=TIMEOUT)
        await pool.request("GET", "/g", {}, timeout=TIMEOUT)
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/", {"X-Evil": "a\r\nInjected: 1"}, timeout=TIMEOUT)
        await pool.close()
    patch, post, plain = server.receipts
    assert (patch.method, patch.target, patch.body) == ("PATCH", "/a%2Fb?x=1", b"payload")
    assert patch.headers["host"] == "api.example:6443"
    assert patch.headers["content-length"] == "7"
    assert patch.headers["content-type"] == "text/plain"
    assert post.headers["content-length"] == "0"
    assert "content-length" not in plain.headers
    assert "transfer-encoding" not in plain.headers


# --- keep-alive and the pool limit ------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    peers: set[object] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response({"n": request.query.get("n")})

    app = web.Application()
    app.router.add_get("/", handler)
    async with web_server(app) as port:
        pool = pool_for(port)
        for n in range(20):
            assert await get(pool, f"/?n={n}") == b'{"n": "%d"}' % n
        await pool.close()
    assert len(peers) == 1


async def test_pool_never_opens_more_than_its_limit() -> None:
    peers: set[object] = set()
    in_flight = 0
    most = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="slow")

    app = web.Application()
    app.router.add_get("/slow", handler)
    async with web_server(app) as port:
        pool = pool_for(port, limit=2)
        bodies = await asyncio.gather(*(get(pool, "/slow") for _ in range(5)))
        await pool.close()
    assert bodies == [b"slow"] * 5
    assert most == 2
    assert len(peers) == 2


# --- stale, reset and refused connections ------------------------------------------------------------------


async def test_idle_connection_the_server_closed_is_dropped_and_replaced() -> None:
    # Keep-alive by its headers, but the server closes each connection after answering (an idle timeout).
    server = RawServer(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), close_after=True)
    async with server.running():
        pool = pool_for(server.port)
        assert await get(pool) == b"ok"
        await poll_until(lambda: server.open_now == 0, "server closed the connection", timeout=TIMEOUT)
        await poll_until(lambda: not pool._idle, "the pool dropped the closed connection", timeout=TIMEOUT)
        # A POST, which is never retried: it succeeds only because it went straight to a new connection.
        assert await get(pool, method="POST") == b"ok"
        await pool.close()
    assert server.connections == 2
    assert len(server.receipts) == 2


@pytest.mark.parametrize(
    ("method", "retried"),
    [("GET", True), ("PUT", True), ("DELETE", True), ("POST", False), ("PATCH", False)],
)
async def test_reused_connection_reset_before_the_answer(method: str, retried: bool) -> None:
    async def reply(connection: int, index: int, request: Received) -> bytes | None:
        if connection == 0 and index == 1:
            return None  # the kept-alive connection dies under the second request
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    server = RawServer(reply)
    async with server.running():
        pool = pool_for(server.port)
        assert await get(pool) == b"ok"
        if retried:
            assert await get(pool, "/again", method=method) == b"ok"
        else:
            # The request reached the server and may have taken effect: it is not sent twice.
            with pytest.raises(KubeConnectionError, match=f"{method} /again"):
                await get(pool, "/again", method=method)
        await pool.close()
    expected = ["/", "/again", "/again"] if retried else ["/", "/again"]
    assert [r.target for r in server.receipts] == expected
    assert server.connections == (2 if retried else 1)


async def test_reset_on_a_fresh_connection_is_not_retried() -> None:
    async def reply(connection: int, index: int, request: Received) -> bytes | None:
        return None

    server = RawServer(reply)
    async with server.running():
        pool = pool_for(server.port)
        with pytest.raises(KubeConnectionError, match="GET /"):
            await get(pool)
        await pool.close()
    assert len(server.receipts) == 1


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        pool = pool_for(port)
        with pytest.raises(KubeConnectionError, match=r"GET /: cannot connect to 127\.0\.0\.1:.*Refused"):
            await get(pool)
        await pool.close()


# --- timeouts, cancellation, close -------------------------------------------------------------------------


def slow_then_fast(delay: float) -> Reply:
    async def reply(connection: int, index: int, request: Received) -> bytes | None:
        if request.target == "/slow":
            await asyncio.sleep(delay)
        # The body names the request, so an answer read for the wrong request shows.
        body = request.target.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    return reply


async def test_timeout_closes_the_connection_and_the_pool_recovers() -> None:
    server = RawServer(slow_then_fast(1.0))
    async with server.running():
        pool = pool_for(server.port, limit=1)
        started = asyncio.get_running_loop().time()
        with pytest.raises(KubeConnectionError, match=r"GET /slow: timed out after 0\.1s"):
            await get(pool, "/slow", timeout=0.1)
        assert asyncio.get_running_loop().time() - started < 0.8
        # The only slot is free again, and the late answer (first in line on the old connection) can't
        # reach the next request.
        assert await get(pool, "/fast") == b"/fast"
        assert await get(pool, "/fast") == b"/fast"
        await pool.close()
    assert server.connections == 2


async def test_timeout_covers_the_wait_for_a_free_connection() -> None:
    server = RawServer(slow_then_fast(0.5))
    async with server.running():
        pool = pool_for(server.port, limit=1)
        slow = asyncio.create_task(get(pool, "/slow"))
        await poll_until(lambda: len(server.receipts) == 1, "slow request received", timeout=TIMEOUT)
        with pytest.raises(KubeConnectionError, match="timed out"):
            await get(pool, "/fast", timeout=0.1)
        assert await slow == b"/slow"
        await pool.close()


async def test_cancelled_request_closes_its_connection() -> None:
    server = RawServer(slow_then_fast(0.3))
    async with server.running():
        pool = pool_for(server.port, limit=1)
        task = asyncio.create_task(get(pool, "/slow"))
        await poll_until(lambda: len(server.receipts) == 1, "slow request received", timeout=TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await poll_until(lambda: server.open_now == 0, "server saw the close", timeout=TIMEOUT)
        assert await get(pool, "/fast") == b"/fast"
        await pool.close()
    assert server.connections == 2


async def test_close_closes_idle_connections_and_refuses_more() -> None:
    server = RawServer(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    async with server.running():
        pool = pool_for(server.port)
        await asyncio.gather(get(pool), get(pool), get(pool))
        assert server.open_now == 3
        await pool.close()
        await poll_until(lambda: server.open_now == 0, "server saw every close", timeout=TIMEOUT)
        with pytest.raises(KubeConnectionError, match="closed"):
            await get(pool)


async def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    async def reply(connection: int, index: int, request: Received) -> bytes | None:
        # An answer with a stray extra answer behind it: the stream is out of step.
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    server = RawServer(reply)
    async with server.running():
        pool = pool_for(server.port)
        assert await get(pool) == b"ok"
        assert await get(pool) == b"ok"
        await pool.close()
    assert server.connections == 2


async def test_close_fails_requests_in_flight_without_retrying_them() -> None:
    server = RawServer(slow_then_fast(0.5))
    async with server.running():
        pool = pool_for(server.port)
        assert await get(pool, "/fast") == b"/fast"
        slow = asyncio.create_task(get(pool, "/slow"))  # on the kept-alive connection: a retry candidate
        await poll_until(lambda: len(server.receipts) == 2, "slow request received", timeout=TIMEOUT)
        await pool.close()
        with pytest.raises(KubeConnectionError, match="GET /slow"):
            await slow
    assert server.connections == 1
