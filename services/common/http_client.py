"""A small keep-alive HTTP/1.1 client for one server, on one asyncio event loop.

`AsyncKube` makes a few plain JSON calls per scheduled pod; a general-purpose client (aiohttp's) spends more
CPU on each call than the call's own I/O does. This one does only what those calls need: a pool of at most
`limit` connections to one host (plain TCP or TLS), one request at a time per connection, a request head
written in one piece, and an answer parsed by hand from the stream (Content-Length, chunked, or up to EOF).

Failures where no usable answer came surface as `KubeConnectionError` (an `OSError`), naming the method and
the target. A connection that failed, timed out or was cancelled mid-request is closed, never pooled again:
a late answer on it would be read as the answer to the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from typing import Final, NamedTuple

__all__ = ["ConnectionPool", "Headers", "KubeConnectionError", "Response"]

# Methods whose repetition has no extra effect (RFC 9110 9.2.2): safe to send again when a reused
# connection dies before any byte of the answer came back.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})
_MAX_LINE: Final = 64 * 1024  # bound on a head or chunk-size line we buffer while waiting for its end
_HEX: Final = b"0123456789abcdefABCDEF"

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _TO_EOF, _DONE = range(7)


class KubeConnectionError(ConnectionError):
    """The API server gave no answer (refused, reset, timed out, TLS failure)."""


class Headers(dict[str, str]):
    """Answer headers by lower-cased name; lookups ignore case. Repeated fields are joined with ", "."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response(NamedTuple):
    status: int
    reason: str
    headers: Headers
    body: bytes


def _find(buf: bytearray, end: bytes, what: str) -> int:
    """Where `end` starts in `buf`, -1 while it has not come yet (within a bound on what we buffer)."""
    at = buf.find(end)
    if at < 0 and len(buf) > _MAX_LINE:
        raise ConnectionError(f"{what} too long")
    return at


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses its answer as the bytes come, resolves `send`'s future."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False  # connection_lost seen
        self.idle = False  # in the pool's idle list
        self.reusable = True
        self.sent = False  # the current request was written
        self.received = False  # a byte of the current answer arrived
        self._waiter: asyncio.Future[Response] | None = None
        self._buf = bytearray()
        self._state = _HEAD
        self._head_only = False
        self._remaining = 0
        self._body = bytearray()
        self._status = 0
        self._reason = ""
        self._headers = Headers()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[Response]:
        self.sent = False
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed before the request was sent")
        waiter: asyncio.Future[Response] = self._pool.loop.create_future()
        self._waiter, self._head_only, self._state, self.received = waiter, head_only, _HEAD, False
        self.transport.write(data)
        self.sent = True
        return waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.lost:
            # RuntimeError: its event loop is closed already, with nothing left to run the close.
            with contextlib.suppress(RuntimeError):
                self.transport.abort()  # no graceful TLS shutdown: it would wait on the peer

    # --- protocol callbacks -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the stream can no longer be matched to requests.
            self.close()
            return
        self.received = True
        self._buf += data
        try:
            self._parse()
        except ConnectionError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool:
        if self._waiter is not None and self._state == _TO_EOF:
            self._finish(bytes(self._buf))
            self._buf.clear()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.reusable = True, False
        if self._waiter is not None:
            if self._state == _TO_EOF and exc is None:
                self._finish(bytes(self._buf))
            elif exc is not None:
                self._fail(exc if isinstance(exc, OSError) else ConnectionResetError(str(exc)))
            elif not self.received:
                self._fail(ConnectionResetError("server closed the connection before answering"))
            else:
                self._fail(ConnectionResetError("server closed the connection mid-answer"))
        self._pool._forget(self)

    # --- answer parsing ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        while self._waiter is not None:
            state = self._state
            if state == _HEAD:
                end = _find(buf, b"\r\n\r\n", "answer head")
                if end < 0:
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._read_head(head)
            elif state == _LENGTH:
                n = self._remaining
                if len(buf) < n:
                    return
                body = bytes(buf[:n])
                del buf[:n]
                self._finish(body)
            elif state == _CHUNK_SIZE:
                end = _find(buf, b"\r\n", "chunk-size line")
                if end < 0:
                    return
                digits = bytes(buf[:end]).split(b";", 1)[0].strip()  # a chunk extension is ignored
                del buf[: end + 2]
                if not digits or digits.strip(_HEX):
                    raise ConnectionError(f"bad chunk size {digits!r}")
                self._remaining = int(digits, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_DATA:
                n = self._remaining
                if len(buf) < n + 2:
                    return
                if buf[n : n + 2] != b"\r\n":
                    raise ConnectionError("chunk not followed by CRLF")
                self._body += buf[:n]
                del buf[: n + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = _find(buf, b"\r\n", "trailer line")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:  # the empty line that ends the trailer section; trailer fields are dropped
                    self._finish(bytes(self._body))
            else:  # _TO_EOF: the body is whatever comes before the server closes
                return

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"bad status line {lines[0][:100]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            if status == 101:
                raise ConnectionError("unexpected 101 Switching Protocols")
            return  # informational (100 Continue, 103 Early Hints): the real answer follows
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ConnectionError(f"bad header line {line[:100]!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            previous = dict.get(headers, key)
            dict.__setitem__(headers, key, text if previous is None else f"{previous}, {text}")
        self._status, self._headers = status, headers
        self._reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        connection = dict.get(headers, "connection")
        tokens = {t.strip() for t in connection.lower().split(",")} if connection else set()
        if (parts[0] == b"HTTP/1.0" and "keep-alive" not in tokens) or "close" in tokens:
            self.reusable = False
        encoding = dict.get(headers, "transfer-encoding")
        length = dict.get(headers, "content-length")
        if self._head_only or status in (204, 304):
            self._finish(b"")
        elif encoding is not None:
            self._body = bytearray()
            if encoding.lower().rsplit(",", 1)[-1].strip() == "chunked":
                self._state = _CHUNK_SIZE
            else:  # another coding last: the body is delimited by the server closing (RFC 9112 6.3)
                self._state, self.reusable = _TO_EOF, False
        elif length is not None:
            if not length.isdigit():
                raise ConnectionError(f"bad Content-Length {length!r}")
            self._state, self._remaining = _LENGTH, int(length)
        else:
            self._state, self.reusable = _TO_EOF, False

    def _finish(self, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        self._state, self._body = _DONE, bytearray()
        if self._buf:
            self.reusable = False  # bytes past the answer's end: the stream is out of step
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._reason, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class ConnectionPool:
    """Up to `limit` keep-alive connections to `host:port` on the running event loop (create it there).

    A request takes an idle connection (the most recently used) or opens one; beyond `limit` it waits for a
    free one. `ssl` None means plain TCP; `server_hostname` is the TLS name sent as SNI and checked against
    the certificate (defaults to `host`); `authority` is the Host header (defaults to `host:port`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        authority: str | None = None,
        limit: int = 64,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._host, self._port, self._ssl = host, port, ssl
        self._server_hostname = (server_hostname or host) if ssl is not None else None
        self._authority = authority or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        timeout: float,
    ) -> Response:
        """Send one request (`target`: path and query, already percent-encoded) and read its whole answer.
        Raises `KubeConnectionError` when no answer came within `timeout` seconds (connect included)."""
        if self.closed:
            raise KubeConnectionError(f"{method} {target}: the connection pool is closed")
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self._authority}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if body is not None or method in _WITH_BODY:
            lines.append(f"Content-Length: {len(body) if body is not None else 0}\r\n")
        lines.append("\r\n")
        head = "".join(lines)
        if head.count("\n") != len(lines) + 1:  # a CR/LF inside a field would forge header lines
            raise ValueError(f"{method} {target}: line break inside the request target or a header")
        data = head.encode("latin-1") + body if body else head.encode("latin-1")
        try:
            async with asyncio.timeout(timeout), self._slots:
                return await self._exchange(method, target, data)
        except TimeoutError:
            # Only the deadline raises it here: every socket-level OSError became a KubeConnectionError.
            raise KubeConnectionError(f"{method} {target}: timed out after {timeout:g}s") from None

    async def _exchange(self, method: str, target: str, data: bytes) -> Response:
        conn = self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect(method, target)
        try:
            return await self._round_trip(conn, method, data)
        except OSError as exc:
            # A kept-alive connection the server closed as we reused it fails before any byte of the
            # answer. Sending again is safe when the request is idempotent or never went out. A POST or
            # PATCH may have reached the server and taken effect, so it is not repeated: the caller sees
            # the ambiguous outcome (as `KubeConnectionError`) and settles it by reading the state back.
            if not (reused and not conn.received and (method in _IDEMPOTENT or not conn.sent)):
                raise KubeConnectionError(f"{method} {target}: {type(exc).__name__}: {exc}") from exc
        conn = await self._connect(method, target)
        try:
            return await self._round_trip(conn, method, data)
        except OSError as exc:
            raise KubeConnectionError(f"{method} {target}: {type(exc).__name__}: {exc}") from exc

    async def _round_trip(self, conn: _Connection, method: str, data: bytes) -> Response:
        try:
            response = await conn.send(data, method == "HEAD")
        except BaseException:  # failure, timeout, cancellation: the answer may still come, so drop it
            conn.close()
            self._forget(conn)
            raise
        if conn.reusable and not conn.lost and not self.closed:
            conn.idle = True
            self._idle.append(conn)
        else:
            conn.close()
            self._forget(conn)
        return response

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            conn.idle = False
            if not conn.lost:
                return conn
        return None

    async def _connect(self, method: str, target: str) -> _Connection:
        if self.closed:  # closed while this request waited or failed: open nothing more
            raise KubeConnectionError(f"{method} {target}: the connection pool is closed")
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._server_hostname,
            )
        except OSError as exc:  # refused, unreachable, name resolution, TLS (ssl.SSLError is an OSError)
            raise KubeConnectionError(
                f"{method} {target}: cannot connect to {self._authority}: {type(exc).__name__}: {exc}"
            ) from exc
        self._open.add(conn)
        return conn

    def _forget(self, conn: _Connection) -> None:
        """Drop a connection that is closed or closing (idle ones the server closed included)."""
        self._open.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, busy ones included (their requests fail)."""
        self.abandon()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run before the loop ends

    def abandon(self) -> None:
        """Close what can be closed without awaiting (the pool's loop may be gone or not running)."""
        self.closed = True
        connections = list(self._open)
        self._idle.clear()
        self._open.clear()
        for conn in connections:
            conn.idle = False
            conn.close()
