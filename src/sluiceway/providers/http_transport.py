"""The httpx transport of the provider clients: HTTP/1.1 keep-alive over asyncio protocols.

One connection carries one request at a time; idle connections are kept per origin (scheme,
host, port) for ``keepalive_expiry_seconds`` and reused newest first; at most ``max_connections``
are open at once, and a request that finds none free waits (FIFO) up to the pool timeout. The
whole answer is read before a request returns (provider answers are small JSON documents):
``handle_async_request`` serves httpx, ``exchange`` a request already in wire form (what the
provider clients send). Bodies are framed by ``Content-Length``, ``Transfer-Encoding: chunked``
or the end of the connection; framing that does not add up (a negative or conflicting length,
a chunk not ended by CRLF, more than 100 interim 1xx answers) is a ``RemoteProtocolError``,
never a silently shortened body. There are no retries: a failed attempt raises and is counted by
the executor.

Why not httpcore's pool: per request it scans its connections and asks each idle one whether it
is readable through anyio (a ``poll`` and a ``getpeername`` system call each), and wraps every
read and write in cancel scopes. Here readability is known from the protocol callbacks, and a
request costs a few callbacks on the event loop.

Failures are httpx's exceptions (``ConnectError``, ``ConnectTimeout``, ``ReadError``,
``ReadTimeout``, ``WriteError``, ``WriteTimeout``, ``PoolTimeout``, ``RemoteProtocolError``),
so the client boundary maps them as it maps any httpx failure. Cancelling a request closes its
connection (its state is unknown) and frees the slot.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import httpx

_MAX_HEAD_BYTES = 64 * 1024
_MAX_INTERIM_ANSWERS = 100  # 1xx answers before the final one (100 Continue, 103 Early Hints)
_READ_CHUNK = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_HEX_DIGITS = b"0123456789abcdefABCDEF"
DEFAULT_KEEPALIVE_EXPIRY_SECONDS = 5.0

Origin = tuple[bytes, bytes, int]
"""(scheme, host, port) of a connection pool, e.g. ``(b"http", b"127.0.0.1", 8000)``."""


class RawAnswer(NamedTuple):
    """One whole HTTP answer as read from the wire."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    version: bytes
    reason: bytes


class _Head(NamedTuple):
    """The status line and headers of one answer, with what frames its body."""

    status: int
    version: bytes
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None  # Content-Length, when given
    chunked: bool
    connection: bytes  # the Connection header, lower-cased


class _Timeout(Exception):
    """A wait ran out of time; turned into the httpx timeout of the phase that waited."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a receive buffer and at most one waiter for more bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False

    # -- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.transport = None
        self._wake()
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport ---------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """An idle connection that the server has not closed and that has no stray bytes."""
        return self.transport is not None and not self.eof and not self.buffer

    async def _wait(self, future: asyncio.Future[None], timeout_seconds: float | None) -> None:
        handle = None
        if timeout_seconds is not None:
            handle = self._loop.call_later(timeout_seconds, _expire, future)
        try:
            await future
        finally:
            if handle is not None:
                handle.cancel()

    async def write(self, data: bytes, timeout_seconds: float | None) -> None:
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("the connection was closed before the request was sent")
        transport.write(data)
        while self._paused and self.transport is not None:
            self._writable = self._loop.create_future()
            try:
                await self._wait(self._writable, timeout_seconds)
            finally:
                self._writable = None
        if self.transport is None:
            raise ConnectionResetError("the connection was closed while the request was sent")

    async def fill(self, timeout_seconds: float | None) -> bool:
        """Wait for more bytes; False once the peer closed the connection."""
        if self.eof:
            return False
        self._waiter = self._loop.create_future()
        try:
            await self._wait(self._waiter, timeout_seconds)
        finally:
            self._waiter = None
        return bool(self.buffer) or not self.eof

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Timeout())


class Http11Transport(httpx.AsyncBaseTransport):
    """A keep-alive HTTP/1.1 pool of at most ``max_connections`` connections; no retries.

    ``ssl_context`` is used for ``https`` origins (default: httpx's, made at the first https
    connection). ``statistics`` counts connections opened and requests sent.
    """

    def __init__(
        self,
        max_connections: int,
        *,
        keepalive_expiry_seconds: float = DEFAULT_KEEPALIVE_EXPIRY_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"Http11Transport needs max_connections >= 1, got {max_connections}")
        self.max_connections = max_connections
        self._keepalive_expiry_seconds = keepalive_expiry_seconds
        self._ssl_context = ssl_context
        self._clock = clock
        # Mutable state, all of it:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0  # connections open or being opened, idle ones included
        self._slot_waiters: collections.deque[tuple[Origin, asyncio.Future[_Connection | None]]] = (
            collections.deque()
        )
        self._closed = False
        self.connections_opened = 0
        self.requests_sent = 0

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    # -- the request -------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin: Origin = (url.raw_scheme, url.raw_host, url.port or default_port(url.raw_scheme))
        body = request.content if isinstance(request.stream, httpx.ByteStream) else b""
        if not isinstance(request.stream, httpx.ByteStream):
            body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        answer = await self.exchange(
            origin,
            _request_head(request, len(body)) + body,
            timeouts,
            head_only=request.method == "HEAD",
            request=request,
        )
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            content=answer.content,
            request=request,
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
        )

    async def exchange(
        self,
        origin: Origin,
        message: bytes,
        timeouts: Mapping[str, float | None],
        *,
        head_only: bool = False,
        request: httpx.Request | None = None,
    ) -> RawAnswer:
        """Send ``message`` (a whole HTTP/1.1 request: head and body) to ``origin`` and read the
        whole answer. ``timeouts`` per phase, as httpx means them: ``pool``, ``connect``,
        ``write``, and ``read`` for each wait for more bytes (absent: no limit). A limit on the
        whole exchange is the caller's (the provider clients wrap it in ``asyncio.timeout``).
        Failures are httpx's exceptions, naming ``request`` when given.

        The provider clients call this directly with a head they keep ready, which spares them
        building an ``httpx.Request`` and ``httpx.Response`` per attempt."""
        connection = await self._checkout(origin, request, timeouts)
        reuse = False
        try:
            self.requests_sent += 1
            try:
                await connection.write(message, timeouts.get("write"))
            except _Timeout:
                raise httpx.WriteTimeout("timed out sending the request", request=request) from None
            except OSError as exc:
                raise httpx.WriteError(
                    f"sending the request failed: {exc}", request=request
                ) from None
            answer, reuse = await self._read_response(
                connection, request, timeouts.get("read"), head_only
            )
            return answer
        finally:
            self._checkin(origin, connection, reuse)

    async def _read_response(
        self,
        connection: _Connection,
        request: httpx.Request | None,
        timeout_seconds: float | None,
        head_only: bool,
    ) -> tuple[RawAnswer, bool]:
        try:
            return await self._parse(connection, request, timeout_seconds, head_only)
        except _Timeout:
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from None
        except OSError as exc:
            raise httpx.ReadError(f"reading the answer failed: {exc}", request=request) from None

    async def _parse(
        self,
        connection: _Connection,
        request: httpx.Request | None,
        timeout_seconds: float | None,
        head_only: bool,
    ) -> tuple[RawAnswer, bool]:
        # Interim (1xx) answers precede the final one on the same stream; a bounded number of
        # them, read in a loop (a recursion per answer would overflow the stack on a long run).
        for _ in range(_MAX_INTERIM_ANSWERS + 1):
            head = await _read_head(connection, request, timeout_seconds)
            if not 100 <= head.status < 200:
                return await _read_body(connection, request, timeout_seconds, head_only, head)
        raise httpx.RemoteProtocolError(
            f"the server sent more than {_MAX_INTERIM_ANSWERS} interim (1xx) answers without a "
            "final one",
            request=request,
        )

    # -- the pool ----------------------------------------------------------------------------

    async def _checkout(
        self, origin: Origin, request: httpx.Request | None, timeouts: Mapping[str, float | None]
    ) -> _Connection:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            connection = idle.pop()
            if connection.reusable and now - connection.idle_since < self._keepalive_expiry_seconds:
                return connection
            self._discard(connection)
        handed = await self._take_slot(origin, request, timeouts.get("pool"))
        if handed is not None:
            return handed
        try:
            return await self._connect(origin, request, timeouts.get("connect"))
        except BaseException:
            self._free_slot()
            raise

    async def _take_slot(
        self, origin: Origin, request: httpx.Request | None, timeout_seconds: float | None
    ) -> _Connection | None:
        """Count a slot for a new connection (``None``), or wait for one: then either a slot
        or an idle connection of ``origin`` handed over by a finished request."""
        if self._open >= self.max_connections:
            self._close_one_idle()
        if self._open < self.max_connections and not self._slot_waiters:
            self._open += 1
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Connection | None] = loop.create_future()
        entry = (origin, future)
        self._slot_waiters.append(entry)
        handle = (
            loop.call_later(timeout_seconds, _expire, future)
            if timeout_seconds is not None
            else None
        )
        try:
            return await future  # the slot is counted for us before the future resolves
        except _Timeout:
            raise httpx.PoolTimeout("no connection became free in time", request=request) from None
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                handed = future.result()  # granted, then cancelled: pass it on
                if handed is None:
                    self._free_slot()
                else:
                    self._checkin(origin, handed, True)
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if entry in self._slot_waiters:
                self._slot_waiters.remove(entry)

    def _free_slot(self) -> None:
        self._open -= 1
        while self._slot_waiters and self._open < self.max_connections:
            _, waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)

    def _close_one_idle(self) -> None:
        oldest: tuple[float, Origin, _Connection] | None = None
        for origin, idle in self._idle.items():
            if idle and (oldest is None or idle[0].idle_since < oldest[0]):
                oldest = (idle[0].idle_since, origin, idle[0])
        if oldest is not None:
            self._idle[oldest[1]].remove(oldest[2])
            self._discard(oldest[2])

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._free_slot()

    async def _connect(
        self, origin: Origin, request: httpx.Request | None, timeout_seconds: float | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            context = self._ssl_context
        elif scheme != b"http":
            raise httpx.UnsupportedProtocol(
                f"the provider transport speaks http and https, not {scheme.decode()!r}",
                request=request,
            )
        connection = _Connection(loop)
        hostname = host.decode("ascii")
        try:
            async with asyncio.timeout(timeout_seconds):
                await loop.create_connection(
                    lambda: connection,
                    hostname,
                    port,
                    ssl=context,
                    server_hostname=hostname if context is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {hostname}:{port} within {timeout_seconds}s", request=request
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {hostname}:{port}: {exc}", request=request
            ) from None
        self.connections_opened += 1
        return connection

    def _checkin(self, origin: Origin, connection: _Connection, reuse: bool) -> None:
        if not (reuse and connection.reusable and not self._closed):
            connection.abort()
            self._free_slot()
            return
        for entry in self._slot_waiters:
            waiting_origin, waiter = entry
            if waiting_origin == origin and not waiter.done():
                self._slot_waiters.remove(entry)
                waiter.set_result(connection)  # the slot goes with the connection
                return
        if self._slot_waiters:
            # Waiters for other origins: close this connection to make room for theirs.
            self._discard(connection)
            return
        connection.idle_since = self._clock()
        self._idle.setdefault(origin, []).append(connection)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
                self._open -= 1
            idle.clear()
        for _, waiter in self._slot_waiters:
            if not waiter.done():
                waiter.cancel()
        self._slot_waiters.clear()


def default_port(scheme: bytes) -> int:
    """The port of ``scheme`` when a URL names none."""
    return 443 if scheme == b"https" else 80


def _request_head(request: httpx.Request, body_length: int) -> bytes:
    target = request.url.raw_path or b"/"
    parts = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue  # the body is sent whole, framed by its length
        if lowered == b"content-length":
            has_length = True
            value = str(body_length).encode("ascii")
        parts += (name, b": ", value, b"\r\n")
    if not has_length and (body_length or request.method in ("POST", "PUT", "PATCH")):
        parts.append(f"content-length: {body_length}\r\n".encode("ascii"))
    parts.append(b"\r\n")
    return b"".join(parts)


async def _read_head(
    connection: _Connection, request: httpx.Request | None, timeout_seconds: float | None
) -> _Head:
    """Read and parse one status line and its headers, leaving the body in the buffer."""
    buffer = connection.buffer
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buffer) > _MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("the answer's headers are too large", request=request)
        if not await connection.fill(timeout_seconds):
            _raise_if_reset(connection)
            raise httpx.RemoteProtocolError(
                "the server closed the connection without sending a complete answer",
                request=request,
            )
    lines = bytes(buffer[:end]).split(b"\r\n")
    del buffer[: end + 4]
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
    code = status_line[1]
    if not (len(code) == 3 and code.isdigit()):
        raise httpx.RemoteProtocolError(f"malformed status code {code[:20]!r}", request=request)
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    connection_header = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"malformed header {line[:80]!r}", request=request)
        name = name.strip()
        value = value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            # Digits only (no sign, no spaces): a negative length would cut the body short.
            # Repeated headers must agree (RFC 9110 §8.6).
            if not value.isdigit() or (length is not None and int(value) != length):
                raise httpx.RemoteProtocolError(
                    f"bad content-length {value[:20]!r}; it must be a non-negative decimal "
                    "number, the same in every Content-Length header",
                    request=request,
                )
            length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lowered == b"connection":
            connection_header = value.lower()
    return _Head(
        status=int(code),
        version=status_line[0],
        reason=status_line[2] if len(status_line) > 2 else b"",
        headers=headers,
        length=length,
        chunked=chunked,
        connection=connection_header,
    )


async def _read_body(
    connection: _Connection,
    request: httpx.Request | None,
    timeout_seconds: float | None,
    head_only: bool,
    head: _Head,
) -> tuple[RawAnswer, bool]:
    buffer = connection.buffer
    status, version, length = head.status, head.version, head.length
    keep_alive = (
        b"close" not in head.connection
        if version == b"HTTP/1.1"
        else b"keep-alive" in head.connection
    )
    if head_only or status in _NO_BODY_STATUSES:
        content = b""
    elif head.chunked:
        content = await _read_chunked(connection, request, timeout_seconds)
    elif length is not None:
        while len(buffer) < length:
            if not await connection.fill(timeout_seconds):
                _raise_if_reset(connection)
                raise httpx.RemoteProtocolError(
                    f"the server closed the connection {len(buffer)} of {length} body bytes in",
                    request=request,
                )
        content = bytes(buffer[:length])
        del buffer[:length]
    else:
        while await connection.fill(timeout_seconds):
            pass
        _raise_if_reset(connection)
        content = bytes(buffer)
        buffer.clear()
        keep_alive = False
    answer = RawAnswer(status, head.headers, content, version, head.reason)
    return answer, keep_alive and not connection.buffer


def _raise_if_reset(connection: _Connection) -> None:
    error = connection.error
    if isinstance(error, OSError):
        raise error


async def _read_chunked(
    connection: _Connection, request: httpx.Request | None, timeout_seconds: float | None
) -> bytes:
    buffer = connection.buffer
    body = bytearray()

    async def line() -> bytes:
        while True:
            end = buffer.find(b"\r\n")
            if end >= 0:
                text = bytes(buffer[:end])
                del buffer[: end + 2]
                return text
            if len(buffer) > _MAX_HEAD_BYTES or not await connection.fill(timeout_seconds):
                _raise_if_reset(connection)
                raise httpx.RemoteProtocolError("a chunked body ended early", request=request)

    while True:
        size_text = (await line()).split(b";", 1)[0].strip()
        # Hex digits only: int(..., 16) would also take a sign, underscores or a 0x prefix.
        if not size_text or size_text.strip(_HEX_DIGITS):
            raise httpx.RemoteProtocolError(f"bad chunk size {size_text[:20]!r}", request=request)
        size = int(size_text, 16)
        if size == 0:
            while await line():
                pass  # trailers
            return bytes(body)
        while len(buffer) < size + 2:
            if not await connection.fill(timeout_seconds):
                _raise_if_reset(connection)
                raise httpx.RemoteProtocolError("a chunked body ended early", request=request)
        if buffer[size : size + 2] != b"\r\n":
            raise httpx.RemoteProtocolError(
                f"a chunk of {size} bytes is not followed by CRLF (the chunk size does not "
                "match its data)",
                request=request,
            )
        body += buffer[:size]
        del buffer[: size + 2]
