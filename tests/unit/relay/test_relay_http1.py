"""The relay's HTTP/1.1 client against scripted servers on 127.0.0.1 (in-process, no fixed ports)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from services.relay import http1
from services.relay.http1 import ClosedError, ConnectError, Http1Client

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
Script = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """Answers each request with ``script(n, writer)`` (n: the request's rank on its connection, from 0);
    the connection stays open while it returns True."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.script(n, writer):
                    break
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/events?x=1"


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[Server]:
    server = Server(script)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


def answer(raw: bytes, *, keep: bool = True) -> Script:
    async def script(_n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return script


async def post(client: Http1Client, server: Server, body: bytes = b'{"id": 1}', timeout_s: float = 5.0) -> http1.Answer:
    return await client.post(server.url, body, {"X-Kbingest-Event-Id": "e1"}, timeout_s=timeout_s)


def numbered(n: int) -> bytes:
    """An answer that says which request of its connection it answers."""
    body = str(n).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def pipelined(
    client: Http1Client, server: Server, count: int, *, timeout_s: float = 5.0, may_resend: bool = True
) -> list[http1.Result]:
    requests = [(b'{"id": %d}' % i, {"X-Kbingest-Event-Id": f"e{i}"}) for i in range(count)]
    return await client.post_pipelined(server.url, requests, timeout_s=timeout_s, may_resend=lambda: may_resend)


def ids(server: Server) -> list[bytes]:
    return [request.rpartition(b"\r\n\r\n")[2] for request in server.requests]


async def test_sequential_requests_share_one_kept_alive_connection() -> None:
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\ndown")) as server:
        for _ in range(3):
            reply = await post(client, server)
            assert (reply.status, reply.headers["retry-after"], reply.text) == (503, "7", "down")
        assert server.connections == 1 and client.connections() == 1
        head = server.requests[0].split(b"\r\n\r\n")[0]
        assert head.startswith(b"POST /v1/events?x=1 HTTP/1.1\r\n")
        assert b"\r\nX-Kbingest-Event-Id: e1" in head and b"\r\nContent-Length: 9" in head
    await client.aclose()


async def test_one_connection_per_request_in_flight_then_reused() -> None:
    arrived = asyncio.Event()

    async def hold_until_four(_n: int, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) % 4 == 0:
            arrived.set()
        await arrived.wait()
        writer.write(OK)
        return True

    client = Http1Client(connect_timeout_s=2)
    async with serving(hold_until_four) as server:
        await asyncio.gather(*(post(client, server) for _ in range(4)))
        assert server.connections == 4
        arrived.clear()
        await asyncio.gather(*(post(client, server) for _ in range(4)))
        assert server.connections == 4, "the idle connections were reused"
    await client.aclose()


async def test_chunked_and_close_delimited_answers() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n'
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(chunked)) as server:
        assert (await post(client, server)).body == b'{"a": 1}'
    async with serving(answer(b"HTTP/1.0 202 Accepted\r\n\r\nwhole body", keep=False)) as server:
        reply = await post(client, server)
        assert (reply.status, reply.body) == (202, b"whole body")
    await client.aclose()


async def test_interim_answers_are_skipped() -> None:
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)) as server:
        assert (await post(client, server)).status == 200
    await client.aclose()


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",  # closed mid-body
        b"",  # closed without a byte
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
    ],
)
async def test_an_incomplete_or_foreign_answer_is_a_closed_error(broken: bytes) -> None:
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(broken, keep=False)) as server:
        with pytest.raises(ClosedError):
            await post(client, server)
        assert client.connections() == 0
    await client.aclose()


async def test_a_kept_alive_connection_closed_as_it_is_reused_is_replaced_once() -> None:
    async def answer_first_only(n: int, writer: asyncio.StreamWriter) -> bool:
        # Each connection answers its first request and drops the second unanswered: the race of a
        # server's keep-alive timeout with our next request.
        if n > 0:
            return False
        writer.write(OK)
        return True

    client = Http1Client(connect_timeout_s=2)
    async with serving(answer_first_only) as server:
        assert (await post(client, server)).status == 200
        assert (await post(client, server)).status == 200
        assert server.connections == 2, "the second request went again on a new connection"
    await client.aclose()


async def test_no_answer_in_time_raises_and_drops_the_connection() -> None:
    async def never(_n: int, _writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3600)
        return False

    client = Http1Client(connect_timeout_s=2)
    async with serving(never) as server:
        with pytest.raises(TimeoutError):
            await post(client, server, timeout_s=0.2)
        assert client.connections() == 0
        # Pipelined, nothing answered in the whole time: no request got through, each one timed out.
        results = await pipelined(client, server, 4, timeout_s=0.2)
        assert len(results) == 4 and all(isinstance(r, TimeoutError) for r in results)
        assert client.connections() == 0
    await client.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    async with serving(answer(OK)) as server:
        url = server.url
    client = Http1Client(connect_timeout_s=2)
    with pytest.raises(ConnectError):
        await client.post(url, b"{}", {}, timeout_s=5)
    await client.aclose()


async def test_large_bodies_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY_BYTES", 10)
    big = b"x" * 5000
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 5000\r\n\r\n" + big)) as server:
        for _ in range(2):
            reply = await post(client, server)
            assert (reply.status, reply.body) == (500, b"x" * 10)
        assert server.connections == 1, "the rest was read, so the connection stays usable"
    await client.aclose()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        asyncio.run(Http1Client(connect_timeout_s=1).post("ftp://host/x", b"", {}, timeout_s=1))


async def test_credentials_in_the_url_are_sent_as_basic_authentication() -> None:
    client = Http1Client(connect_timeout_s=2)
    async with serving(answer(OK)) as server:
        url = server.url.replace("http://", "http://relay:p%40ss@")
        assert (await client.post(url, b"{}", {}, timeout_s=5)).status == 200
        head = server.requests[0].split(b"\r\n\r\n")[0]
        assert b"\r\nAuthorization: Basic cmVsYXk6cEBzcw==\r\n" in head  # relay:p@ss
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in head
    await client.aclose()


async def test_pipelined_requests_go_in_one_write_and_are_answered_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    async def in_turn(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(numbered(n))
        return True

    exchanges: list[int] = []
    real = http1._Connection.exchange

    async def counted(self: http1._Connection, data: bytes, count: int, deadline: float):  # type: ignore[no-untyped-def]
        exchanges.append(count)
        return await real(self, data, count, deadline)

    monkeypatch.setattr(http1._Connection, "exchange", counted)
    client = Http1Client(connect_timeout_s=2)
    async with serving(in_turn) as server:
        results = await pipelined(client, server, 8)
        assert [r.body for r in results if isinstance(r, http1.Answer)] == [str(i).encode() for i in range(8)]
        assert exchanges == [8] and server.connections == 1, "one exchange (one write) on one connection"
        assert ids(server) == [b'{"id": %d}' % i for i in range(8)]
        assert client.connections() == 1, "kept alive for the next exchange"
    await client.aclose()


@pytest.mark.parametrize("how", ["silent close", "Connection: close"])
async def test_a_connection_ended_after_k_answers_resends_only_the_unanswered(how: str) -> None:
    async def three_per_connection(n: int, writer: asyncio.StreamWriter) -> bool:
        # A server closing every connection after three answers (like nginx's keepalive_requests).
        if n == 3:
            return False
        if how == "Connection: close" and n == 2:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n2")
            return False
        writer.write(numbered(n))
        return True

    client = Http1Client(connect_timeout_s=2)
    async with serving(three_per_connection) as server:
        results = await pipelined(client, server, 10)
        assert all(isinstance(r, http1.Answer) and r.status == 200 for r in results), results
        assert server.connections == 4
        # Each answered once, in order; one read but not answered before a silent close was sent again.
        assert set(ids(server)) == {b'{"id": %d}' % i for i in range(10)}
    await client.aclose()


async def test_a_connection_closed_without_any_answer_fails_only_its_oldest_request() -> None:
    async def poison(_n: int, writer: asyncio.StreamWriter) -> bool:
        # Request 2 kills its connection every time (a request that crashes the server).
        if server.requests[-1].endswith(b'{"id": 2}'):
            return False
        writer.write(OK)
        return True

    client = Http1Client(connect_timeout_s=2)
    async with serving(poison) as server:
        results = await pipelined(client, server, 5)
        assert isinstance(results[2], ClosedError)
        assert [r.status for i, r in enumerate(results) if i != 2 and isinstance(r, http1.Answer)] == [200] * 4
    await client.aclose()


async def test_unanswered_requests_are_not_sent_again_when_the_caller_says_no() -> None:
    async def two_then_close(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False
        writer.write(numbered(n))
        return True

    client = Http1Client(connect_timeout_s=2)
    async with serving(two_then_close) as server:
        results = await pipelined(client, server, 5, may_resend=False)
        assert [r.body if isinstance(r, http1.Answer) else r for r in results] == [b"0", b"1", None, None, None]
        assert server.connections == 1
    await client.aclose()


async def test_a_refused_pipeline_is_a_connect_error_for_every_request() -> None:
    async with serving(answer(OK)) as server:
        pass
    client = Http1Client(connect_timeout_s=2)
    results = await pipelined(client, server, 3)
    assert len(results) == 3 and all(isinstance(r, ConnectError) for r in results)
    await client.aclose()
