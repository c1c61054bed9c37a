"""The lean HTTP/1.1 server over real sockets: aiohttp and curl as clients, raw sockets for framing
(pipelining, chunked bodies, 100-continue, malformed input), timeouts, TLS and an orderly stop."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from services.common.certs import issue_serving_certificate
from services.common.http_server import Handler, HttpRequest, HttpResponse, HttpServer, _Connection

MAX_BODY = 4096


class App:
    """Handlers that report what they were given, plus ones that fail, stall or misbehave."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def echo(self, request: HttpRequest) -> HttpResponse:
        body = None if request.body is None else request.body.decode()
        seen = {"method": request.method, "path": request.path, "query": request.query, "body": body}
        seen |= {"remote": request.remote, "headers": dict(request.headers)}
        return HttpResponse(200, json.dumps(seen).encode())

    async def hello(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"hello", content_type="text/plain", headers=(("X-Kind", "greeting"),))

    async def boom(self, request: HttpRequest) -> HttpResponse:
        raise RuntimeError("handler bug")

    async def stray_cancel(self, request: HttpRequest) -> HttpResponse:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError though nobody cancelled this handler
        return HttpResponse(200)

    async def bad_header(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, headers=(("X-Split", "a\r\nInjected: yes"),))

    async def slow(self, request: HttpRequest) -> HttpResponse:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return HttpResponse(200, b'"slow"')

    async def nothing(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(204, b"ignored")

    async def sleepy(self, request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(0.05)
        return HttpResponse(200, b'"sleepy"')

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/echo"): self.echo,
            ("GET", "/echo"): self.echo,
            ("GET", "/hello"): self.hello,
            ("POST", "/boom"): self.boom,
            ("POST", "/stray-cancel"): self.stray_cancel,
            ("GET", "/bad-header"): self.bad_header,
            ("POST", "/slow"): self.slow,
            ("POST", "/sleepy"): self.sleepy,
            ("POST", "/nothing"): self.nothing,
        }


class Running:
    def __init__(self, server: HttpServer, port: int, app: App) -> None:
        self.server, self.port, self.app = server, port, app
        self.url = f"http://127.0.0.1:{port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def _start(**options: Any) -> Running:
    app = App()
    server = HttpServer(app.routes(), name="test", max_body=MAX_BODY, **options)
    port = await server.start("127.0.0.1", 0)
    return Running(server, port, app)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    started = await _start()
    try:
        yield started
    finally:
        started.app.release.set()
        await started.server.stop(grace=0.5)


async def read_response(
    reader: asyncio.StreamReader, *, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    status_line, *fields = head.decode("latin-1").split("\r\n")[:-2]
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for field in fields:
        name, _, value = field.partition(": ")
        headers[name.lower()] = value
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 2)
    return int(status), headers, body


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), 2) == b""


def post(path: str, body: bytes, *extra: str) -> bytes:
    fields = "".join(f"{field}\r\n" for field in extra)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{fields}\r\n"
    return head.encode() + body


def chunked(path: str, encoded: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + encoded


async def test_aiohttp_reuses_one_connection(running: Running) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(30):
            async with session.post(f"{running.url}/echo?n={i}", data=b"x" * 2000) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                assert "Date" in response.headers
                seen = await response.json()
                assert (seen["path"], seen["query"], seen["body"]) == ("/echo", f"n={i}", "x" * 2000)
                assert seen["remote"] == "127.0.0.1"
                assert seen["headers"]["content-length"] == "2000"
    assert running.server.connections_accepted == 1


async def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    reader, writer = await running.connect()
    # The first handler is the slowest: its answer must still come first.
    writer.write(
        post("/sleepy", b"")
        + post("/echo", b"one")
        + chunked("/echo", b"3\r\ntwo\r\n0\r\n\r\n")
        + b"GET /hello HTTP/1.1\r\n\r\n"
    )
    assert (await read_response(reader))[2] == b'"sleepy"'
    assert json.loads((await read_response(reader))[2])["body"] == "one"
    assert json.loads((await read_response(reader))[2])["body"] == "two"
    assert (await read_response(reader))[2] == b"hello"
    writer.close()


async def test_request_trickled_byte_by_byte(running: Running) -> None:
    reader, writer = await running.connect()
    for byte in b"\r\n" + post("/echo", b'{"a": 1}', "X-Dup: 1", "x-dup: 2"):
        writer.write(bytes([byte]))
        await writer.drain()
    _, _, body = await read_response(reader)
    seen = json.loads(body)
    assert (seen["body"], seen["headers"]["x-dup"]) == ('{"a": 1}', "1, 2")
    writer.close()


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
        (b"A;name=value;x\r\n0123456789\r\n0\r\n\r\n", "0123456789"),  # chunk extensions
        (b"3 \r\nabc\r\n0\r\nX-Digest: abc\r\nX-More: 1\r\n\r\n", "abc"),  # trailers
        (b"0\r\n\r\n", ""),
    ],
    ids=["two-chunks", "extensions", "trailers", "empty"],
)
async def test_chunked_bodies(running: Running, encoded: bytes, expected: str) -> None:
    reader, writer = await running.connect()
    request = chunked("/echo", encoded)
    for part in (request[:40], request[40:47], request[47:]):  # split inside the framing
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.001)
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)["body"]) == (200, expected)
    assert "connection" not in headers
    writer.write(post("/echo", b"next"))
    assert json.loads((await read_response(reader))[2])["body"] == "next"
    writer.close()


async def test_expect_100_continue(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(post("/echo", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 4"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    assert json.loads((await read_response(reader))[2])["body"] == "body"
    # Too large: refused before the client sends the body.
    writer.write(post("/echo", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 5000"))
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")
    await assert_closed(reader)
    writer.close()


MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET echo HTTP/1.1\r\n\r\n", 400),
    (b"GET /echo HTTP/2.0\r\n\r\n", 505),
    (b"GET /echo HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nA: x\x00y\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
    (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 70_000, 400),
    (b"GET /echo HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /echo HTTP/1.1\r\nX: " + b"a" * 70_000, 431),  # no end of headers in sight
    (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
async def test_malformed_requests_are_refused_and_closed(running: Running, raw: bytes, status: int) -> None:
    reader, writer = await running.connect()
    writer.write(raw)
    got, headers, body = await read_response(reader)
    assert (got, headers["connection"]) == (status, "close")
    assert "error" in json.loads(body)
    await assert_closed(reader)
    writer.close()
    # Other connections are not affected.
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/hello") as response:
        assert (response.status, await response.text()) == (200, "hello")


async def test_body_over_max_body_is_drained_and_reported_as_none(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(post("/echo", b"x" * (MAX_BODY + 1)))
    assert json.loads((await read_response(reader))[2])["body"] is None
    chunk = b"400\r\n" + b"y" * 0x400 + b"\r\n"
    writer.write(chunked("/echo", chunk * 5 + b"0\r\n\r\n"))
    assert json.loads((await read_response(reader))[2])["body"] is None
    writer.write(post("/echo", b"z" * MAX_BODY))  # the connection is still in step
    assert json.loads((await read_response(reader))[2])["body"] == "z" * MAX_BODY
    writer.write(post("/echo", b"", "X: 1").replace(b"Length: 0", b"Length: %d" % (MAX_BODY * 16 + 1)))
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")
    await assert_closed(reader)
    writer.close()


async def test_chunked_body_over_hard_cap_is_refused(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(chunked("/echo", b"%x\r\n" % (MAX_BODY * 16 + 1)))
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")
    writer.close()


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nowhere", 404, None),
        ("DELETE", "/echo", 405, "GET, HEAD, POST"),
        ("POST", "/hello", 405, "GET, HEAD"),
        ("GET", "/hello?x=1", 200, None),
        ("HEAD", "/nowhere", 404, None),
    ],
)
async def test_routing(running: Running, method: str, path: str, status: int, allow: str | None) -> None:
    async with aiohttp.ClientSession() as session, session.request(method, running.url + path) as response:
        assert response.status == status
        assert response.headers.get("Allow") == allow


async def test_head_answers_the_get_headers_without_body(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = await read_response(reader, head_only=True)
    assert (status, headers["content-length"], headers["x-kind"]) == (200, "5", "greeting")
    assert headers["content-type"] == "text/plain"
    assert (await read_response(reader))[2] == b"hello"  # no stray body bytes in between
    writer.close()


async def test_204_has_no_body_and_no_length(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(post("/nothing", b"") + b"GET /hello HTTP/1.1\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body, "content-length" in headers) == (204, b"", False)
    assert (await read_response(reader))[2] == b"hello"
    writer.close()


class Recorder(asyncio.Transport):
    """A transport that keeps what is written, for driving the protocol without sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_answer_is_one_write() -> None:
    app = App()
    server = HttpServer(app.routes(), name="one-write")
    protocol = _Connection(server, asyncio.get_running_loop())
    transport = Recorder()
    protocol.connection_made(transport)
    protocol.data_received(post("/echo", b"x" * 100))
    while protocol.task is not None:
        await asyncio.sleep(0)
    (answer,) = transport.writes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(body)["remote"] == "127.0.0.1"


FRAGMENTS = [
    b"GET /x HTTP/1.1\r\n",
    b"POST /x HTTP/1.0\r\n",
    b"\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 99\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"0\r\n",
    b"5;ext=1\r\n",
    b"abcde",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=40))
def test_parser_never_raises_and_only_writes_http(parts: list[bytes]) -> None:
    loop = asyncio.new_event_loop()
    try:
        # No routes: every complete request is answered inline (404), so no task outlives the test.
        server = HttpServer({}, name="fuzz", max_body=16, max_header_bytes=256)
        protocol, transport = _Connection(server, loop), Recorder()
        protocol.connection_made(transport)
        with capture_logs() as logs:
            for part in parts:
                protocol.data_received(part)
        assert not [entry for entry in logs if entry["event"] == "http_connection_failed"]
        assert all(write.startswith(b"HTTP/1.1 ") for write in transport.writes)
        protocol.connection_lost(None)
    finally:
        loop.close()


async def test_reading_pauses_while_a_handler_holds_a_large_backlog(running: Running) -> None:
    reader, writer = await running.connect()
    # Two requests behind the stalled one, together over max_header_bytes (each drained: over max_body).
    writer.write(post("/slow", b"") + post("/echo", b"b" * 60_000) + post("/echo", b"c" * 10_000))
    await asyncio.wait_for(running.app.started.wait(), 2)
    (conn,) = running.server._connections
    for _ in range(200):
        if not conn.transport.is_reading():
            break
        await asyncio.sleep(0.005)
    assert not conn.transport.is_reading()
    running.app.release.set()
    assert (await read_response(reader))[2] == b'"slow"'
    assert json.loads((await read_response(reader))[2])["body"] is None
    assert json.loads((await read_response(reader))[2])["body"] is None
    assert conn.transport.is_reading()
    writer.close()


@pytest.mark.parametrize(
    ("request_head", "closes", "connection"),
    [
        (b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n", True, "close"),
        (b"GET /hello HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n", True, "close"),
        (b"GET /hello HTTP/1.0\r\n\r\n", True, "close"),
        (b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False, "keep-alive"),
        (b"GET /hello HTTP/1.1\r\n\r\n", False, None),
        (b"GET http://example:80/hello HTTP/1.1\r\n\r\n", False, None),  # absolute-form
    ],
)
async def test_connection_persistence(
    running: Running, request_head: bytes, closes: bool, connection: str | None
) -> None:
    reader, writer = await running.connect()
    writer.write(request_head)
    status, headers, body = await read_response(reader)
    assert (status, body, headers.get("connection")) == (200, b"hello", connection)
    if closes:
        await assert_closed(reader)
    else:
        writer.write(b"GET /hello HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[2] == b"hello"
    writer.close()


async def test_handler_exception_is_500_and_connection_survives(running: Running) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        with capture_logs() as logs:
            async with session.post(f"{running.url}/boom", data=b"{}") as response:
                assert response.status == 500
                assert await response.json() == {"error": "internal error"}
            async with session.get(f"{running.url}/bad-header") as response:
                assert response.status == 500
                assert "Injected" not in response.headers
            async with session.post(f"{running.url}/stray-cancel") as response:
                assert response.status == 500
        async with session.get(f"{running.url}/hello") as response:
            assert response.status == 200
    assert running.server.connections_accepted == 1
    failed = [entry for entry in logs if entry["event"] == "http_handler_failed"]
    assert [(e["method"], e["path"], e["server"]) for e in failed] == [
        ("POST", "/boom", "test"),
        ("GET", "/bad-header", "test"),
        ("POST", "/stray-cancel", "test"),
    ]


async def test_idle_keepalive_connection_is_closed() -> None:
    started = await _start(keepalive_timeout=0.05)
    try:
        reader, writer = await started.connect()
        writer.write(b"GET /hello HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await assert_closed(reader)
        writer.close()
    finally:
        await started.server.stop()


async def test_slow_request_gets_408() -> None:
    started = await _start(request_timeout=0.05)
    try:
        reader, writer = await started.connect()
        writer.write(post("/echo", b"partial").replace(b"Length: 7", b"Length: 70"))
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (408, "close")
        await assert_closed(reader)
        writer.close()
    finally:
        await started.server.stop()


async def test_stop_lets_the_request_in_flight_finish(running: Running) -> None:
    reader, writer = await running.connect()
    idle_reader, idle_writer = await running.connect()
    writer.write(post("/slow", b""))
    await asyncio.wait_for(running.app.started.wait(), 2)
    stopping = asyncio.create_task(running.server.stop(grace=2.0))
    await assert_closed(idle_reader)  # idle connections are closed at once
    running.app.release.set()
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b'"slow"', "close")
    await asyncio.wait_for(stopping, 2)
    with pytest.raises(OSError):
        await running.connect()
    writer.close()
    idle_writer.close()


async def test_stop_cancels_a_handler_past_grace(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(post("/slow", b""))
    await asyncio.wait_for(running.app.started.wait(), 2)
    await asyncio.wait_for(running.server.stop(grace=0.05), 2)
    assert running.app.cancelled
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    await assert_closed(reader)
    writer.close()


async def test_client_disconnect_cancels_the_handler(running: Running) -> None:
    _, writer = await running.connect()
    writer.write(post("/slow", b""))
    await asyncio.wait_for(running.app.started.wait(), 2)
    writer.transport.abort()
    for _ in range(100):
        if running.app.cancelled:
            break
        await asyncio.sleep(0.01)
    assert running.app.cancelled


async def test_reading_pauses_while_the_client_does_not_read(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(b"GET /hello HTTP/1.1\r\n\r\n")
    await read_response(reader)
    (conn,) = running.server._connections
    assert conn.transport is not None
    conn.pause_writing()
    assert not conn.transport.is_reading()
    writer.write(b"GET /hello HTTP/1.1\r\n\r\n")  # not read (nor answered) until writing resumes
    await asyncio.sleep(0.02)
    conn.resume_writing()
    assert conn.transport.is_reading()
    assert (await read_response(reader))[2] == b"hello"
    writer.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return issue_serving_certificate(["127.0.0.1", "localhost"]).write(tmp_path)


async def _start_tls(tls_files: tuple[Path, Path, Path]) -> Running:
    _, cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = App()
    server = HttpServer(app.routes(), name="tls")
    port = await server.start("127.0.0.1", 0, ssl=context)
    return Running(server, port, app)


async def test_tls_with_aiohttp(tls_files: tuple[Path, Path, Path]) -> None:
    started = await _start_tls(tls_files)
    try:
        client = ssl.create_default_context(cafile=str(tls_files[0]))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=client)) as session:
            for body in (b"a" * 3000, b"b" * 70_000):  # the larger one spans several TLS records
                url = f"https://127.0.0.1:{started.port}/echo"
                async with session.post(url, data=body) as response:
                    assert (await response.json())["body"] == body.decode()
        assert started.server.connections_accepted == 1
    finally:
        await started.server.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_tls_with_curl(tls_files: tuple[Path, Path, Path]) -> None:
    started = await _start_tls(tls_files)
    url = f"https://127.0.0.1:{started.port}/echo"
    try:
        # Two URLs in one curl run share one connection; -d sends a form POST.
        process = await asyncio.create_subprocess_exec(
            *("curl", "-sS", "--fail", "--cacert", str(tls_files[0]), "-d", "payload", url, url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, err
        decoder, answers, text = json.JSONDecoder(), [], out.decode()
        while text:
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:]
        assert [a["body"] for a in answers] == ["payload", "payload"]
        assert started.server.connections_accepted == 1
    finally:
        await started.server.stop()
