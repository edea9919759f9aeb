"""A real subscriber process for relay tests and benchmarks (raw ASGI on uvicorn + httptools).

``python -m tests.support.subscriber_server --port N --secret S [--no-verify] [--no-record]``

- ``POST /v1/events`` (one CloudEvent, or a JSON batch when Content-Type is
  ``application/cloudevents-batch+json``): verifies the signature with ``shared.subscriber``
  (401 if bad), records each event, answers 200 or what ``/control`` says.
- ``POST /control`` ``{"status": 503, "count": 3, "retry_after": "1", "delay_s": 0.0}``: the next
  ``count`` events (-1: all) get ``status``; every request waits ``delay_s`` first.
- ``GET /deliveries?since=K`` → ``{"total": N, "items": [...]}`` in arrival order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from shared.subscriber import SignatureError, verify

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
BATCH_TYPE = "application/cloudevents-batch+json"


class Subscriber:
    def __init__(self, secret: str, *, verify_signatures: bool, record: bool) -> None:
        self.secret = secret
        self.verify_signatures = verify_signatures
        self.record = record
        self.deliveries: list[dict[str, Any]] = []
        self.requests = 0
        self.rejected_signatures = 0
        self.control: dict[str, Any] = {"status": 200, "count": 0, "retry_after": None, "delay_s": 0.0}

    def next_status(self) -> int:
        count = self.control["count"]
        if count == 0:
            return 200
        if count > 0:
            self.control["count"] = count - 1
        return int(self.control["status"])

    def note(self, event: dict[str, Any], status: int) -> None:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, payload, extra = await self.route(scope["method"], scope["path"], scope["query_string"], headers, body)
        raw = json.dumps(payload).encode()
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": raw})

    async def route(
        self, method: str, path: str, query: bytes, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if path == "/healthz":
            return 200, {"status": "ok"}, {}
        if path == "/control" and method == "POST":
            self.control.update(json.loads(body))
            return 200, self.control, {}
        if path == "/deliveries":
            since = int(parse_qs(query.decode()).get("since", ["0"])[0])
            stats = {"requests": self.requests, "rejected_signatures": self.rejected_signatures}
            return 200, {"total": len(self.deliveries), "items": self.deliveries[since:], **stats}, {}
        if method == "POST" and path.startswith("/v1/"):
            return await self.receive_events(headers, body)
        return 404, {"error": "not found"}, {}

    async def receive_events(self, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        self.requests += 1
        if self.control["delay_s"]:
            await asyncio.sleep(float(self.control["delay_s"]))
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
        if self.record or self.verify_signatures:
            self.note(json.loads(body), status)
        return status, {"status": status}, extra if status != 200 else {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default="")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    app = Subscriber(args.secret, verify_signatures=not args.no_verify, record=not args.no_record)
    uvicorn.run(
        app,
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
