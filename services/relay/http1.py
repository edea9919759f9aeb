"""The relay's HTTP/1.1 client: POST only, keep-alive, one connection per request in flight.

Why not httpx here (it stays everywhere else): per request, httpx and httpcore cost ~650 µs of CPU
on this machine under load (the client layer alone ~100 µs, and httpcore scans every pooled
connection per request), aiohttp ~80–95 µs, this client ~17 µs (docs/benchmarks.md#relay). At one
signed POST per event that decides the relay's throughput. It does only what the relay needs: a
POST with a body, an answer with its status, headers and (capped) body, parsed by httptools (the
C parser uvicorn uses); connections are kept per origin and reused in LIFO order, no redirects, no
proxies, no compression, no cookies. TLS is the standard library's.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Mapping
from typing import Final, NamedTuple, cast
from urllib.parse import unquote, urlsplit

import httptools

# Subscribers answer small JSON documents; a batch's results stay far below this. The rest of a
# larger body is read and dropped, so the connection can still be reused.
MAX_BODY_BYTES: Final = 1 << 20
# An idle connection older than this is closed rather than reused: a firewall or NAT may have
# dropped it silently, and a request on it would only end at the request timeout.
IDLE_EXPIRY_S: Final = 30.0
USER_AGENT: Final = b"kbingest-relay"


class HTTPError(Exception):
    """The request got no (complete) answer: refused, reset, closed early, or not HTTP."""


class ConnectError(HTTPError):
    """No connection could be made (nothing was sent)."""


class ClosedError(HTTPError):
    """The connection ended before the answer was complete."""


class Answer(NamedTuple):
    """A subscriber's answer: header names lowercased, ``body`` capped at ``MAX_BODY_BYTES``."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._answered = False
        self.reusable = False
        self.open = True
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClosedError(f"invalid HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        # An answer without Content-Length or chunking ends with the connection (HTTP/1.0 style).
        if self._status and "content-length" not in self._headers and "transfer-encoding" not in self._headers:
            self._complete()
        self._fail(ClosedError(f"connection closed before the answer was complete ({exc or 'EOF'})"))

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []
        self._size = 0
        self._status = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._size < MAX_BODY_BYTES:
            self._body.append(body[: MAX_BODY_BYTES - self._size])
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self._status < 200:
            return  # an interim answer (1xx): the real one follows
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, self._headers, b"".join(self._body)))
        self._status = 0

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def send(self, data: bytes, deadline: float) -> Answer:
        """Write one request and wait for its answer until ``deadline`` (loop time); the caller closes on failure."""
        assert self._transport is not None and self._waiter is None
        self.reusable = False
        self._answered = False
        waiter: asyncio.Future[Answer] = self._loop.create_future()
        self._waiter = waiter
        # A timer on the loop, not asyncio.timeout(): a third of the cost, and this runs per event.
        timer = self._loop.call_at(deadline, self._fail, TimeoutError("no answer in time"))
        self._transport.write(data)
        try:
            return await waiter
        finally:
            timer.cancel()

    @property
    def answered(self) -> bool:
        """Whether any byte came back for the last request (a silent close of a reused connection is stale)."""
        return self._answered

    def close(self) -> None:
        self.open = False
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


class _Origin:
    """Where one URL's requests go: the request line prefix, and its idle connections."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        userinfo, _, authority = parts.netloc.rpartition("@")
        head = f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n"
        if userinfo:
            # http://user:password@host/… means HTTP basic authentication, as in httpx and curl.
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            head += f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
        self.prefix = head.encode("ascii") + b"User-Agent: " + USER_AGENT
        self.idle: list[_Connection] = []


class Http1Client:
    """POSTs over kept-alive connections; at most as many connections per origin as requests in flight.

    The caller bounds requests in flight (the relay: ``RELAY_CONCURRENCY`` per URL). A request that
    times out or is cancelled closes its connection.
    """

    def __init__(self, *, connect_timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._ssl_context = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._connections: set[_Connection] = set()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> Answer:
        """One POST answered within ``timeout_s`` (connecting included); raises ``HTTPError`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _Origin(url)
        lines = [origin.prefix, b"\r\nContent-Length: ", str(len(body)).encode()]
        for name, value in headers.items():
            lines += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        lines += (b"\r\n\r\n", body)
        request = b"".join(lines)
        now = time.monotonic()
        while origin.idle:
            conn = origin.idle.pop()
            if not conn.open or now - conn.idle_since > IDLE_EXPIRY_S:
                self._discard(conn)
                continue
            try:
                return await self._exchange(origin, conn, request, deadline)
            except ClosedError:
                # The server closed a kept-alive connection as we reused it: nothing was processed,
                # so sending again on a new connection repeats nothing.
                if conn.answered:
                    raise
        conn = await self._connect(origin, min(deadline, loop.time() + self._connect_timeout_s))
        return await self._exchange(origin, conn, request, deadline)

    async def _connect(self, origin: _Origin, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            context = self._ssl_context = self._ssl_context or ssl.create_default_context()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(lambda: _Connection(loop), origin.host, origin.port, ssl=context)
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError is an OSError)
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
        self._connections.add(conn)
        return conn

    async def _exchange(self, origin: _Origin, conn: _Connection, request: bytes, deadline: float) -> Answer:
        try:
            answer = await conn.send(request, deadline)
        except BaseException:
            # Cancelled (timeout) or failed mid-request: a late answer must never meet the next request.
            self._discard(conn)
            raise
        if conn.reusable:
            conn.idle_since = time.monotonic()
            origin.idle.append(conn)
        else:
            self._discard(conn)
        return answer

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._connections.discard(conn)

    def connections(self) -> int:
        """Connections open now (in use or idle)."""
        return sum(1 for conn in self._connections if conn.open)

    async def aclose(self) -> None:
        for conn in list(self._connections):
            self._discard(conn)
        for origin in self._origins.values():
            origin.idle.clear()
        # Let the transports run their close callbacks before the loop goes away.
        await asyncio.sleep(0)
