"""The relay's HTTP/1.1 client: POST only, keep-alive, pipelining, one connection per exchange in flight.

Why not httpx here (it stays everywhere else): per request, httpx and httpcore cost ~650 µs of CPU
on this machine under load (the client layer alone ~100 µs, and httpcore scans every pooled
connection per request), aiohttp ~80–95 µs, this client ~17 µs (docs/benchmarks.md#relay). At one
signed POST per event that decides the relay's throughput. It does only what the relay needs: a
POST with a body, an answer with its status, headers and (capped) body, parsed by httptools (the
C parser uvicorn uses); connections are kept per origin and reused in LIFO order, no redirects, no
proxies, no compression, no cookies. TLS is the standard library's.

Pipelining (``post_pipelined``): several requests written on one connection with one write, their
answers read in order (HTTP/1.1 servers answer pipelined requests one after the other). Per request
that saves the write system call, most of the event-loop passes and, on the server, the reads. When
the exchange ends early (the server closed the connection, answered ``Connection: close``, or ran
out of time), the requests without an answer are sent again on another connection as long as that
one made progress: only the oldest unanswered request of a connection that answered nothing is
given the error. A request is never reported answered without its answer (at-least-once: the
caller retries the rest, subscribers deduplicate by event id).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
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
    """One keep-alive connection carrying one exchange at a time: one request, or several pipelined."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expected = 0
        self._answers: list[Answer] = []
        self._error: HTTPError | TimeoutError | None = None
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
            self._end(ClosedError(f"invalid HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        # An answer without Content-Length or chunking ends with the connection (HTTP/1.0 style).
        if self._status and "content-length" not in self._headers and "transfer-encoding" not in self._headers:
            self._complete(keep_alive=False)
        self._end(ClosedError(f"connection closed before the answer was complete ({exc or 'EOF'})"))

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
        self._complete(keep_alive=self._parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        if self._waiter is None:
            return  # nobody asked (a stray answer after an exchange ended): the connection is closed by then
        self._answers.append(Answer(self._status, self._headers, b"".join(self._body)))
        self._status = 0
        if len(self._answers) == self._expected:
            self.reusable = keep_alive
            self._end(None)
        elif not keep_alive:
            # The server ends the connection after this answer: it will not answer the rest.
            self._end(ClosedError("the server closed the connection (Connection: close) before answering"))
            self.close()

    def _end(self, error: HTTPError | TimeoutError | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            self._error = error
            waiter.set_result(None)

    async def exchange(
        self, data: bytes, count: int, deadline: float
    ) -> tuple[list[Answer], HTTPError | TimeoutError | None]:
        """Write ``count`` requests (one buffer, one write) and read their answers in order until ``deadline``.

        Returns the answers that came and, if the exchange ended before all of them, why
        (``ClosedError``, ``TimeoutError``). The caller closes the connection then.
        """
        assert self._transport is not None and self._waiter is None
        self.reusable = False
        self._answered = False
        self._answers = []
        self._expected = count
        self._error = None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiter = waiter
        # A timer on the loop, not asyncio.timeout(): a third of the cost, and this runs per exchange.
        timer = self._loop.call_at(deadline, self._end, TimeoutError("no answer in time"))
        self._transport.write(data)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._answers, self._error

    @property
    def answered(self) -> bool:
        """Whether any byte came back in the last exchange (a silent close of a reused connection is stale)."""
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

    def request(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        """The bytes of one POST of ``body`` to this origin."""
        lines = [self.prefix, b"\r\nContent-Length: ", str(len(body)).encode()]
        for name, value in headers.items():
            lines += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        lines += (b"\r\n\r\n", body)
        return b"".join(lines)


# One POST to pipeline: its body and headers.
Request = tuple[bytes, Mapping[str, str]]
# What became of it: its answer, why it has none, or None when it was not sent again (``may_resend``).
Result = Answer | HTTPError | TimeoutError | None


def _always() -> bool:
    return True


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
        (result,) = await self.post_pipelined(url, [(body, headers)], timeout_s=timeout_s)
        if isinstance(result, Answer):
            return result
        assert result is not None  # only a resend is ever given up, and one request is never resent after progress
        raise result

    async def post_pipelined(
        self,
        url: str,
        requests: Sequence[Request],
        *,
        timeout_s: float,
        may_resend: Callable[[], bool] = _always,
    ) -> list[Result]:
        """POSTs pipelined on one connection at a time; one result per request, in order.

        A result is the ``Answer``, the error that ended the request (``HTTPError``, ``TimeoutError``),
        or None when requests left unanswered by an ended exchange were not sent again because
        ``may_resend()`` said no. Each exchange has ``timeout_s``, connecting included.
        """
        loop = asyncio.get_running_loop()
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = _Origin(url)
        payloads = [origin.request(body, headers) for body, headers in requests]
        results: list[Result] = []
        while len(results) < len(payloads):
            if results and not may_resend():
                results += [None] * (len(payloads) - len(results))
                break
            todo = payloads[len(results) :]
            deadline = loop.time() + timeout_s
            conn = self._idle(origin)
            reused = conn is not None
            if conn is None:
                try:
                    conn = await self._connect(origin, min(deadline, loop.time() + self._connect_timeout_s))
                except (ConnectError, TimeoutError) as exc:
                    # Nothing was sent: every request still to go has the same answer.
                    results += [exc] * len(todo)
                    break
            answers, error = await self._exchange(origin, conn, todo, deadline)
            results += answers
            if error is None or answers or (reused and not conn.answered):
                # Done; or the connection ended after some answers (a server closing after N requests), or a
                # kept-alive connection was closed as it was reused and answered nothing: the rest go again.
                continue
            if isinstance(error, TimeoutError):
                # Nothing answered in the whole time: no request of this exchange got through in time.
                results += [error] * len(todo)
                break
            # Closed without a single answer: the oldest request had the connection to itself and gets the
            # error (a request that crashes the server must not take its neighbours down with it).
            results.append(error)
        return results

    def _idle(self, origin: _Origin) -> _Connection | None:
        """The most recently used idle connection still worth reusing (older ones are closed)."""
        now = time.monotonic()
        while origin.idle:
            conn = origin.idle.pop()
            if conn.open and now - conn.idle_since <= IDLE_EXPIRY_S:
                return conn
            self._discard(conn)
        return None

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

    async def _exchange(
        self, origin: _Origin, conn: _Connection, payloads: Sequence[bytes], deadline: float
    ) -> tuple[list[Answer], HTTPError | TimeoutError | None]:
        try:
            answers, error = await conn.exchange(b"".join(payloads), len(payloads), deadline)
        except BaseException:
            # Cancelled mid-exchange: a late answer must never meet the next request.
            self._discard(conn)
            raise
        if error is None and conn.reusable:
            conn.idle_since = time.monotonic()
            origin.idle.append(conn)
        else:
            self._discard(conn)
        return answers, error

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
