"""A small HTTP/1.1 server on a bare `asyncio.Protocol`, for endpoints where the server's own CPU counts.

The scheduler extender answers three requests per pod (filter, prioritize, bind) from kube-scheduler over
keep-alive HTTP/1.1, and its CPU per pod is budgeted. aiohttp's web server spends tens of microseconds per
request on machinery those calls do not use (request objects, stream readers, middleware and access-log
hooks); measured with 2 KB POSTs, this server needs about a third less CPU per request in total, most of
what remains being the event loop's own socket work. It does only what such callers need: exact
(method, path) routes, Content-Length and chunked bodies, `Expect: 100-continue`, keep-alive with
pipelining, idle and request timeouts, TLS through the event loop. Whatever it does not understand it
refuses with a 4xx answer and `Connection: close` rather than guessing where the next request starts.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from ssl import SSLContext
from typing import Final, cast

from services.common.log import get_logger

__all__ = ["Handler", "HttpRequest", "HttpResponse", "HttpServer"]

log = get_logger("kube-vgpu-http")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str  # query string split off, not percent-decoded
    query: str
    headers: Mapping[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes | None  # None: larger than max_body (read and discarded; the connection stays usable)
    remote: str | None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"  # "" sends no Content-Type
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]

_REQUEST_LINE: Final = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
_FIELD: Final = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([^\x00-\x08\x0a-\x1f\x7f]*)")
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,15}")
_UNSAFE: Final = re.compile(r"[\r\n\x00]")
_HARD_CAP_FACTOR: Final = 16  # a body over max_body is drained up to this multiple of it, then refused
# Connection states. The request timeout runs from the first byte of a request to its last.
_IDLE, _HEAD, _BODY, _CHUNK_HEAD, _CHUNK_DATA, _TRAILERS, _BUSY = range(7)


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    # formatdate costs microseconds; once a second is enough for a Date header.
    return formatdate(second, usegmt=True)


_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}


def _serialize(response: HttpResponse, keep_alive: bool, head_only: bool, http11: bool) -> bytes:
    """Status line, headers and body as one buffer, so the answer goes out in one write (one syscall,
    one TLS record when small)."""
    status, body = response.status, response.body
    extra = ""
    for name, value in response.headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise ValueError(f"response header {name!r} contains a line break or NUL")
        extra += f"{name}: {value}\r\n"
    if _UNSAFE.search(response.content_type):
        raise ValueError("the response content type contains a line break or NUL")
    if response.content_type:
        extra = f"Content-Type: {response.content_type}\r\n{extra}"
    if status != 204 and status != 304:
        extra = f"Content-Length: {len(body)}\r\n{extra}"
    else:
        body = b""
    if not keep_alive:
        extra += "Connection: close\r\n"
    elif not http11:
        extra += "Connection: keep-alive\r\n"
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
    head = f"{status_line}Date: {_http_date(int(time.time()))}\r\n{extra}\r\n".encode("latin-1")
    return head if head_only or not body else head + body


def _error(status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, f'{{"error": "{detail}"}}'.encode(), headers=headers)


class _HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class HttpServer:
    """Routes are exact (METHOD, path) pairs; HEAD is answered from a GET route without the body."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        *,
        name: str,
        max_body: int = 1 << 20,
        max_header_bytes: int = 64 * 1024,
        keepalive_timeout: float = 75.0,
        request_timeout: float = 60.0,
    ) -> None:
        self.name, self.max_body, self.max_header_bytes = name, max_body, max_header_bytes
        self.keepalive_timeout, self.request_timeout = keepalive_timeout, request_timeout
        self.connections_accepted = 0  # a counter for tests and metrics: keep-alive reuse shows here
        self._routes = dict(routes)
        methods: dict[str, set[str]] = {}
        for method, path in self._routes:
            methods.setdefault(path, set()).update({method, "HEAD"} if method == "GET" else {method})
        self._allowed = {path: ", ".join(sorted(names)) for path, names in methods.items()}
        # One timer per server sweeps deadlines, instead of a timer armed and cancelled per request.
        self._tick = max(0.005, min(1.0, keepalive_timeout / 4, request_timeout / 4))
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.stopping = False

    async def start(self, host: str | None, port: int, ssl: SSLContext | None = None) -> int:
        """Listen; returns the bound port (of the first socket when host is empty and port is 0)."""
        loop = asyncio.get_running_loop()
        self.stopping = False
        self._server = await loop.create_server(lambda: _Connection(self, loop), host or None, port, ssl=ssl)
        self._sweeper = loop.call_later(self._tick, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting; idle connections close now, busy ones after their answer (Connection: close);
        whatever is still open after `grace` is aborted and its handler cancelled."""
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        self.stopping = True
        self._server.close()
        for conn in [c for c in self._connections if c.state == _IDLE and not c.buffer]:
            conn.close()
        deadline = loop.time() + grace
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for conn in list(self._connections):
            conn.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        deadline = loop.time() + 1.0
        while self._connections and loop.time() < deadline:  # connection_lost runs on a later turn
            await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._server.wait_closed()
        self._server = self._sweeper = None

    def _sweep(self) -> None:
        assert self._server is not None
        now = self._server.get_loop().time()
        for conn in [c for c in self._connections if c.deadline <= now]:
            conn.expire()
        self._sweeper = self._server.get_loop().call_later(self._tick, self._sweep)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests from a bytearray, runs one handler at a time, answers in
    request order (pipelined requests wait in the buffer)."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server, self.loop = server, loop
        self.buffer = bytearray()
        self.state = _IDLE
        self.deadline = float("inf")
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport  # set by connection_made, before anything else runs
        self.remote: str | None = None
        self.closing = self.write_paused = self.read_paused = False
        # The request being read.
        self.method = self.path = self.query = ""
        self.headers: dict[str, str] = {}
        self.keep_alive = self.http11 = self.discard = True
        self.remaining = self.received = self.trailer_bytes = 0
        self.chunks: bytearray | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else None
        self.server._connections.add(self)
        self.server.connections_accepted += 1
        self.deadline = self.loop.time() + self.server.keepalive_timeout
        if self.server.stopping:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        if not self.closing:
            self.buffer += data
            self.process()

    def eof_received(self) -> bool:
        # HTTP/1.1 clients do not half-close to end a request; a FIN means the client gave up (a timeout
        # in kube-scheduler), so the connection closes and the handler is cancelled, not left running.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.process()

    # --- states -------------------------------------------------------------------------------------

    def close(self) -> None:
        self.closing, self.deadline = True, float("inf")
        self.buffer.clear()
        self.transport.close()

    def abort(self) -> None:
        self.close()
        if self.task is not None:
            self.task.cancel()
        self.transport.abort()

    def expire(self) -> None:
        if self.state != _IDLE:
            self.reject(_HttpError(408, "request timeout"))
        elif self.transport.get_write_buffer_size():
            self.abort()  # idle, but the client never read our last answer: close() would wait on it
        else:
            self.close()

    def reject(self, err: _HttpError) -> None:
        log.debug("http_request_rejected", server=self.server.name, status=err.status, detail=err.detail)
        if not self.closing:
            self.transport.write(_serialize(_error(err.status, err.detail), False, False, True))
        self.close()

    def update_reading(self) -> None:
        # Stop reading while the client does not read our answers, or while a handler runs and the
        # pipelined backlog is already large: the buffer must not grow without bound.
        busy = self.task is not None and len(self.buffer) > self.server.max_header_bytes
        pause = self.write_paused or busy
        if pause != self.read_paused and not self.closing:
            self.read_paused = pause
            (self.transport.pause_reading if pause else self.transport.resume_reading)()

    def process(self) -> None:
        """Parse and dispatch what the buffer holds. Never raises: asyncio would only log it."""
        try:
            while not self.closing and self.task is None and not self.write_paused and self.step():
                pass
        except _HttpError as err:
            self.reject(err)
        except Exception:
            log.exception("http_connection_failed", server=self.server.name)
            self.abort()
        self.update_reading()

    def step(self) -> bool:
        """Advance the parser by one state; False when it needs more bytes."""
        buf, state, server = self.buffer, self.state, self.server
        if state == _IDLE:
            while buf.startswith(b"\r\n"):  # RFC 9112 2.2: ignore empty lines before a request line
                del buf[:2]
            if not buf:
                return False
            self.state, self.deadline = _HEAD, self.loop.time() + server.request_timeout
            return True
        if state == _HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0 and len(buf) <= server.max_header_bytes:
                return False
            if end < 0 or end + 4 > server.max_header_bytes:
                raise _HttpError(431, "request header section too large")
            head = buf[:end].decode("latin-1")
            del buf[: end + 4]
            self.start_request(head)
        elif state == _BODY:
            n = min(len(buf), self.remaining)
            if self.discard:
                del buf[:n]
                self.remaining -= n
                if self.remaining:
                    return False
                self.dispatch(None)
            elif n < self.remaining:
                return False
            else:
                body = bytes(buf) if n == len(buf) else bytes(buf[:n])
                del buf[:n]
                self.dispatch(body)
        elif state != _BUSY:
            return self.chunk_step(buf)
        else:
            return False
        return True

    def chunk_step(self, buf: bytearray) -> bool:
        """Chunked framing (RFC 9112 7.1): size line, data and its CRLF, ..., zero size, trailer fields."""
        if self.remaining:
            n = min(len(buf), self.remaining)
            if self.chunks is not None:
                self.chunks += buf[:n]
            del buf[:n]
            self.remaining -= n
            return n > 0
        end = buf.find(b"\r\n", 0, self.server.max_header_bytes)
        if end < 0:
            if len(buf) >= self.server.max_header_bytes:
                raise _HttpError(400, "chunk framing line too long")
            return False
        line = bytes(buf[:end])
        del buf[: end + 2]
        if self.state == _CHUNK_DATA:
            if line:
                raise _HttpError(400, "chunk data not followed by CRLF")
            self.state = _CHUNK_HEAD
        elif self.state == _CHUNK_HEAD:
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _HttpError(400, "malformed chunk size")
            size = int(size_text, 16)
            self.received += size
            if self.received > self.server.max_body * _HARD_CAP_FACTOR:
                raise _HttpError(413, "request body too large")
            if self.received > self.server.max_body:
                self.chunks = None  # drain the rest; the handler learns of it through body=None
            self.remaining, self.state = size, (_CHUNK_DATA if size else _TRAILERS)
        elif line:  # a trailer field: checked for form, counted, dropped
            self.trailer_bytes += end + 2
            if self.trailer_bytes > self.server.max_header_bytes:
                raise _HttpError(431, "trailer section too large")
            if not _FIELD.fullmatch(line.decode("latin-1")):
                raise _HttpError(400, "malformed trailer field")
        else:
            self.dispatch(None if self.chunks is None else bytes(self.chunks))
        return True

    def start_request(self, head: str) -> None:
        """Request line and header fields; decides how the body is framed (RFC 9112 6.3)."""
        server = self.server
        lines = head.split("\r\n")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise _HttpError(400, "malformed request line")
        method, target, major, minor = match.groups()
        if major != "1" or minor not in ("0", "1"):
            raise _HttpError(505, "HTTP version not supported")
        if not target.startswith("/"):
            scheme, _, rest = target.partition("://")
            if scheme.lower() not in ("http", "https") or not rest:  # absolute-form, as proxies send
                raise _HttpError(400, "malformed request target")
            target = "/" + rest.partition("/")[2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:
                raise _HttpError(400, "malformed header field")
            name, value = field[1].lower(), field[2].strip(" \t")
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous}, {value}"
        self.http11 = minor == "1"
        connection = headers.get("connection")
        if connection is None:
            self.keep_alive = self.http11
        else:
            tokens = {token.strip().lower() for token in connection.split(",")}
            self.keep_alive = "close" not in tokens if self.http11 else "keep-alive" in tokens
        self.method, self.headers = method, headers
        self.path, _, self.query = target.partition("?")
        self.received = self.trailer_bytes = self.remaining = length = 0
        self.discard, self.chunks = False, None
        expects = self.http11 and headers.get("expect", "").lower() == "100-continue"
        coding, length_text = headers.get("transfer-encoding"), headers.get("content-length")
        if coding is not None:
            # Both framings at once is the classic request-smuggling shape; any coding but plain chunked
            # leaves the body length unknown to us.
            if length_text is not None or not self.http11 or coding.strip().lower() != "chunked":
                raise _HttpError(400, "unsupported Transfer-Encoding")
            self.chunks, self.state = bytearray(), _CHUNK_HEAD
        elif length_text is not None:
            values = {value.strip() for value in length_text.split(",")}
            length_value = values.pop()
            if values or not (length_value.isascii() and length_value.isdigit()):
                raise _HttpError(400, "invalid Content-Length")
            length = int(length_value) if len(length_value) <= 18 else 1 << 62
            if length > server.max_body:
                # With 100-continue the client waits for our word: refuse before it sends anything.
                if expects or length > server.max_body * _HARD_CAP_FACTOR:
                    raise _HttpError(413, "request body too large")
                self.discard = True
        if coding is None:
            if not length:
                self.dispatch(b"")
                return
            self.remaining, self.state = length, _BODY
        if expects:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def dispatch(self, body: bytes | None) -> None:
        self.state, self.deadline = _BUSY, float("inf")
        server, method, path = self.server, self.method, self.path
        handler = server._routes.get((method, path))
        head_only = method == "HEAD"
        if handler is None and head_only:
            handler = server._routes.get(("GET", path))
        if handler is None:
            allowed = server._allowed.get(path)
            response = _error(404, "not found")
            if allowed is not None:
                response = _error(405, "method not allowed", (("Allow", allowed),))
            keep_alive = self.keep_alive and not server.stopping
            self.respond(_serialize(response, keep_alive, head_only, self.http11), keep_alive)
            return
        request = HttpRequest(method, path, self.query, self.headers, body, self.remote)
        self.task = self.loop.create_task(self.run(handler, request, head_only))

    async def run(self, handler: Handler, request: HttpRequest, head_only: bool) -> None:
        try:
            response = await handler(request)
            keep_alive = self.keep_alive and not self.server.stopping  # stop() may have begun meanwhile
            data = _serialize(response, keep_alive, head_only, self.http11)
        except (Exception, asyncio.CancelledError) as exc:
            if self.closing and isinstance(exc, asyncio.CancelledError):
                return  # cancelled because the connection is gone: nobody is left to answer
            # A CancelledError otherwise came from something the handler awaited: a failure like any other,
            # and without an answer the connection would hang.
            log.exception(
                "http_handler_failed", server=self.server.name, method=request.method, path=request.path
            )
            keep_alive = self.keep_alive and not self.server.stopping
            data = _serialize(_error(500, "internal error"), keep_alive, head_only, self.http11)
        self.task = None
        if not self.closing:
            self.respond(data, keep_alive)
            self.process()

    def respond(self, data: bytes, keep_alive: bool) -> None:
        self.transport.write(data)
        if not keep_alive:
            self.close()
        else:
            self.state, self.deadline = _IDLE, self.loop.time() + self.server.keepalive_timeout
