"""A real subscriber process for relay tests and benchmarks.

``python -m tests.support.subscriber_server --port N --secret S [--no-verify] [--no-record] [--raw]``

- ``POST /v1/events`` (one CloudEvent, or a JSON batch when Content-Type is
  ``application/cloudevents-batch+json``): verifies the signature with ``shared.signing``
  (401 if bad), records each event, answers 200 or what ``/control`` says.
- ``POST /control`` ``{"status": 503, "count": 3, "retry_after": "1", "delay_s": 0.0}``: the next
  ``count`` events (-1: all) get ``status``; every request waits ``delay_s`` first.
- ``GET /deliveries?since=K`` → ``{"total": N, "items": [...], "requests", "rejected_signatures",
  "unique"}``: arrivals in order (when recording), and how many distinct event ids were accepted.

Served by uvicorn + httptools (raw ASGI: a production-grade server, the tests' default), or with
``--raw`` by a bare asyncio protocol on the same httptools parser: ~5× less CPU per request, so
the benchmark's two cores go to the relay rather than to its subscriber. Both verify every signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import httptools
import uvicorn
import uvloop

from shared.signing import EVENT_ID_HEADER, SignatureError, verify
from tests.support.asgi import read_body

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, Any, dict[str, str]]
BATCH_TYPE = "application/cloudevents-batch+json"
EVENT_ID_KEY = EVENT_ID_HEADER.lower()
# The common answer, encoded once by the raw server (it is sent for nearly every event).
OK: Reply = (200, {"status": 200}, {})


class Subscriber:
    """What the subscriber does, whichever server carries the requests."""

    def __init__(self, secret: str, *, verify_signatures: bool, record: bool) -> None:
        self.secret = secret
        self.verify_signatures = verify_signatures
        self.record = record
        self.deliveries: list[dict[str, Any]] = []
        self.accepted: set[str] = set()
        self.requests = 0
        self.rejected_signatures = 0
        self.control: dict[str, Any] = {"status": 200, "count": 0, "retry_after": None, "delay_s": 0.0}

    def arrived(self, method: str, path: str) -> float:
        """Count an event request as it arrives; how long to stall before answering it."""
        if method == "POST" and path.startswith("/v1/"):
            self.requests += 1
            return float(self.control["delay_s"] or 0.0)
        return 0.0

    def next_status(self) -> int:
        count = self.control["count"]
        if count == 0:
            return 200
        if count > 0:
            self.control["count"] = count - 1
        return int(self.control["status"])

    def note(self, event: dict[str, Any], status: int) -> None:
        if status == 200:
            self.accepted.add(str(event.get("id")))
        if not self.record:
            return
        data = event.get("data") or {}
        self.deliveries.append(
            {
                "id": event.get("id"),
                "type": event.get("type"),
                "subject": event.get("subject"),
                "n": data.get("n") if isinstance(data, dict) else None,
                "status": status,
                "received_at": time.time(),
            }
        )

    def route(self, method: str, path: str, query: bytes, headers: dict[str, str], body: bytes) -> Reply:
        """Header names arrive lowercased."""
        if path == "/healthz":
            return 200, {"status": "ok"}, {}
        if path == "/control" and method == "POST":
            self.control.update(json.loads(body))
            return 200, self.control, {}
        if path == "/deliveries":
            since = int(parse_qs(query.decode()).get("since", ["0"])[0])
            stats = {
                "requests": self.requests,
                "rejected_signatures": self.rejected_signatures,
                "unique": len(self.accepted),
            }
            return 200, {"total": len(self.deliveries), "items": self.deliveries[since:], **stats}, {}
        if method == "POST" and path.startswith("/v1/"):
            return self.receive_events(headers, body)
        return 404, {"error": "not found"}, {}

    def receive_events(self, headers: dict[str, str], body: bytes) -> Reply:
        if self.verify_signatures:
            try:
                verify(self.secret, headers, body)
            except SignatureError as exc:
                self.rejected_signatures += 1
                return 401, {"error": f"{type(exc).__name__}: {exc}"}, {}
        retry_after = self.control["retry_after"]
        extra = {"retry-after": str(retry_after)} if retry_after is not None else {}
        if headers.get("content-type", "").startswith(BATCH_TYPE):
            results = []
            for event in json.loads(body):
                status = self.next_status()
                self.note(event, status)
                item: dict[str, Any] = {"id": event["id"], "status": status}
                if retry_after is not None and status != 200:
                    item["retry_after"] = retry_after
                results.append(item)
            return 200, {"results": results}, {}
        status = self.next_status()
        if self.record:
            self.note(json.loads(body), status)
        elif status == 200:
            # The relay sets this header to the envelope's id: counting it needs no JSON parse per event.
            self.accepted.add(headers.get(EVENT_ID_KEY, ""))
        return OK if status == 200 else (status, {"status": status}, extra)


def _encode(reply: Reply) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    _, payload, extra = reply
    raw = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    return raw, headers + [(k.encode(), v.encode()) for k, v in extra.items()]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Status"


class AsgiApp:
    """The subscriber as a raw ASGI app for uvicorn."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if delay := self.subscriber.arrived(scope["method"], scope["path"]):
            await asyncio.sleep(delay)
        reply = self.subscriber.route(scope["method"], scope["path"], scope["query_string"], headers, body)
        raw, response_headers = _encode(reply)
        await send({"type": "http.response.start", "status": reply[0], "headers": response_headers})
        await send({"type": "http.response.body", "body": raw})


class RawProtocol(asyncio.Protocol):
    """One connection of the ``--raw`` server: httptools parses, each answer is one write."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # Only what the subscriber reads: decoding every header costs more than verifying the signature.
        if name.startswith(b"x-") or name == b"content-type":
            self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self.url)
        method, path = self.parser.get_method().decode(), url.path.decode()
        request = (method, path, url.query or b"", self.headers, b"".join(self.body))
        keep_alive = self.parser.should_keep_alive()
        if delay := self.subscriber.arrived(method, path):
            asyncio.get_running_loop().call_later(delay, self.answer, request, keep_alive)
        else:
            self.answer(request, keep_alive)

    def answer(self, request: tuple[str, str, bytes, dict[str, str], bytes], keep_alive: bool) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        reply = self.subscriber.route(*request)
        self.transport.write(_OK_RESPONSE if reply is OK else _response(reply))
        if not keep_alive:
            self.transport.close()


def _response(reply: Reply) -> bytes:
    raw, headers = _encode(reply)
    head = b"HTTP/1.1 %d %s\r\n" % (reply[0], _reason(reply[0]))
    return head + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + raw


_OK_RESPONSE = _response(OK)


async def serve_raw(subscriber: Subscriber, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawProtocol(subscriber), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default="")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--raw", action="store_true", help="bare asyncio + httptools instead of uvicorn")
    args = parser.parse_args()
    subscriber = Subscriber(args.secret, verify_signatures=not args.no_verify, record=not args.no_record)
    if args.raw:
        uvloop.run(serve_raw(subscriber, args.port))
        return
    uvicorn.run(
        AsgiApp(subscriber),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
