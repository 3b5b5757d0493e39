"""A lean HTTP/1.1 keep-alive transport for the webhook adapter's shared ``httpx.AsyncClient``.

httpx's default transport (httpcore) scans every queued request against every pooled connection,
polling each connection's socket, several times per request: with a hundred requests in flight a
webhook costs milliseconds of CPU, and the worker's throughput is that pool's. This transport keeps,
per origin, a bounded stack of idle connections (asyncio streams) and a semaphore for the bound;
a request takes one connection, writes its head and body in one write, reads the status and
headers, and streams the body by its framing (``Content-Length``, chunked, or until close). A
connection goes back to the stack only when its body was read to the end and both sides allow
keep-alive; anything else (an error, a cancellation, a body left unread) closes it.

It speaks only what a webhook needs: HTTP/1.1 over TCP or TLS, no HTTP/2, no
``Expect: 100-continue``, and no proxies (``HTTP_PROXY`` and friends are not read: pass your own
``httpx.AsyncClient`` to :class:`~chimeway.adapters.webhook.WebhookAdapter` to go through one).
A request on a reused connection that the server closed meanwhile (the connection was idle past
the server's keep-alive) is sent once more on a new connection, as browsers and httpcore do; the
idempotency key makes that safe for the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

import httpx

__all__ = ["KeepAliveTransport"]

_MAX_HEAD: Final = 64 * 1024
_CHUNK: Final = 64 * 1024


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Origin:
    """One scheme/host/port: its idle connections and the bound on how many may be open."""

    def __init__(self, limit: int) -> None:
        self.idle: deque[_Connection] = deque()
        self.slots = asyncio.Semaphore(limit)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Pools up to ``max_connections`` connections per origin, idle ones for ``keepalive_expiry`` s."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._origins: dict[tuple[bytes, bytes, int], _Origin] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL protocol {scheme.decode(errors='replace')!r}")
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("the URL has no host")
        port = url.port or (443 if scheme == b"https" else 80)
        key = (scheme, url.raw_host, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(self.max_connections)
        head = _head(request)
        body = await request.aread()
        timeouts = request.extensions.get("timeout", {})
        await origin.slots.acquire()
        released = False
        try:
            for retry in (True, False):
                conn, reused = self._idle(origin), True
                if conn is None:
                    conn, reused = await self._connect(key, timeouts.get("connect")), False
                try:
                    response = await self._exchange(conn, head + body, request, timeouts.get("read"))
                except _StaleConnection:
                    conn.close()
                    if reused and retry:
                        continue
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering"
                    ) from None
                except BaseException:
                    conn.close()
                    raise
                stream = _Body(self, origin, conn, response)
                released = True
                return httpx.Response(
                    response.status,
                    headers=response.headers,
                    stream=stream,
                    extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
                )
            raise AssertionError("unreachable")
        finally:
            if not released:
                origin.slots.release()

    def _idle(self, origin: _Origin) -> _Connection | None:
        now = time.monotonic()
        while origin.idle:
            conn = origin.idle.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[bytes, bytes, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host.decode("ascii"), port, ssl=context, limit=_MAX_HEAD
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting") from None
        except (OSError, ssl.SSLError, UnicodeError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    async def _exchange(
        self, conn: _Connection, data: bytes, request: httpx.Request, timeout: float | None
    ) -> _Head:
        try:
            async with asyncio.timeout(timeout):
                try:
                    conn.writer.write(data)
                    await conn.writer.drain()
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        raise _StaleConnection from None
                    raise httpx.RemoteProtocolError("the answer ended inside its headers") from None
                except ConnectionError:
                    raise _StaleConnection from None
                while True:
                    head = _parse_head(raw, request.method)
                    if head.status >= 200:  # 1xx answers are informational: the real one follows
                        return head
                    try:
                        raw = await conn.reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError:
                        raise httpx.RemoteProtocolError("the answer ended inside its headers") from None
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer") from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("the answer's headers are too long") from None
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None

    def _release(self, origin: _Origin, conn: _Connection, reusable: bool) -> None:
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            origin.idle.append(conn)
        else:
            conn.close()
        origin.slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()
        self._origins.clear()


class _StaleConnection(Exception):
    """A reused connection was closed by the server before any byte of the answer."""


class _Head:
    __slots__ = ("chunked", "headers", "keep_alive", "length", "reason", "status", "until_close")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunked = False
        self.until_close = False
        self.keep_alive = True


def _head(request: httpx.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        pair = name + b": " + value
        if b"\r" in pair or b"\n" in pair or b"\0" in pair:
            raise httpx.LocalProtocolError("a header name or value contains CR, LF or NUL")
        lines.append(pair)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes, method: str) -> _Head:
    head = _Head()
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        version, head.status = parts[0], int(parts[1])
    except (IndexError, ValueError):
        raise httpx.RemoteProtocolError("malformed status line") from None
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not 100 <= head.status <= 999:
        raise httpx.RemoteProtocolError("malformed status line")
    head.reason = parts[2] if len(parts) > 2 else b""
    head.keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError("malformed header line")
        value = value.strip()
        head.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            # Digits only: int() would also take "+5", " 5" and "1_0".
            if not value.isdigit():
                raise httpx.RemoteProtocolError("malformed Content-Length")
            length = int(value)
            if head.length is not None and head.length != length:
                raise httpx.RemoteProtocolError("malformed Content-Length")
            head.length = length
        elif lowered == b"transfer-encoding":
            head.chunked = value.lower().endswith(b"chunked")
        elif lowered == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"close" in tokens:
                head.keep_alive = False
            elif b"keep-alive" in tokens:
                head.keep_alive = True
    if method == "HEAD" or head.status in (204, 304) or head.status < 200:
        head.length, head.chunked = 0, False
    elif head.chunked:
        head.length = None
    elif head.length is None:
        head.until_close, head.keep_alive = True, False
    return head


class _Body(httpx.AsyncByteStream):
    """The answer's body, as framed; its end (or any failure) hands the connection back."""

    def __init__(
        self, transport: KeepAliveTransport, origin: _Origin, conn: _Connection, head: _Head
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn = conn
        self._head = head
        self._complete = False
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader, head = self._conn.reader, self._head
        try:
            if head.chunked:
                async for chunk in _chunks(reader):
                    yield chunk
            elif head.until_close:
                while chunk := await reader.read(_CHUNK):
                    yield chunk
            else:
                remaining = head.length or 0
                while remaining:
                    chunk = await reader.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise httpx.RemoteProtocolError("the answer ended before its Content-Length")
                    remaining -= len(chunk)
                    yield chunk
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        self._complete = True

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._transport._release(self._origin, self._conn, self._complete and self._head.keep_alive)


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            digits = line.split(b";", 1)[0].strip()
            # Hex digits only: int(..., 16) would also take "0x10", "+a" and "1_0".
            if not digits or digits.strip(b"0123456789abcdefABCDEF") or len(digits) > 16:
                raise httpx.RemoteProtocolError("malformed chunk size")
            size = int(digits, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
                    pass
                return
            while size:
                data = await reader.read(min(size, _CHUNK))
                if not data:
                    raise httpx.RemoteProtocolError("the answer ended inside a chunk")
                size -= len(data)
                yield data
            if await reader.readexactly(2) != b"\r\n":
                raise httpx.RemoteProtocolError("malformed chunk")
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the answer ended inside a chunk") from None
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError("a chunk line is too long") from None
