"""The campaign's two informational subscribers in one process: an honest one and one that answers garbage.

``python -m tests.support.chaos_subscriber --port N --secret S``

- ``POST /audit/v1/events``: verifies the signature, records the event, answers 200.
- ``POST /garbage/v1/events``: during a spell (``POST /control {"spell": true, "rate": 0.8}``) a
  request gets, at that rate, one of: 503 with a 4 MB body, 503 with a malformed ``Retry-After``
  (``²`` among them: digit-like, not ASCII), a connection reset, a 10 s stall, a body cut short.
  Otherwise 200, except for events whose id hashes into ``POISON_ONE_IN``: those are refused
  (410), and must end as dead letters.
- ``GET /record``: what each side saw, per event id (the checker accounts dead letters with it).

Hand-written HTTP/1.1 on asyncio streams (one request per connection) so a reset is a real RST
and a cut body a real cut, which an ASGI server would turn into a tidy 500.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
from typing import Any

from shared.signing import SignatureError, verify
from tests.support.asgi import reset

POISON_ONE_IN = 40
HUGE_BODY_BYTES = 4 * 1024 * 1024
STALL_S = 10.0
MALFORMED_RETRY_AFTER = ("²", "soon", "-1", "1.5e3", "Fri, 99 Foo 2026 25:61:61 GMT", "\u0663", "")
GARBAGE = ("huge_5xx", "bad_retry_after", "reset", "stall", "cut_body")
HEAD_LIMIT = 64 * 1024
BODY_LIMIT = 8 * 1024 * 1024


def poisoned(event_id: str) -> bool:
    """A stable ~1/POISON_ONE_IN of event ids (the same answer across subscriber restarts)."""
    return int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16) % POISON_ONE_IN == 0


class ChaosSubscriber:
    def __init__(self, secret: str, seed: int) -> None:
        self.secret = secret
        self.rng = random.Random(seed)
        self.spell = False
        self.rate = 0.0
        self.audit: dict[str, dict[str, Any]] = {}
        self.garbage: dict[str, list[str]] = {}
        self.bad_signatures = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), 30)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        method, path, headers, body = request
        try:
            await self.route(method, path, headers, body, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def route(
        self, method: str, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if path == "/healthz":
            await _answer(writer, 200, b'{"status":"ok"}')
        elif path == "/control" and method == "POST":
            values = json.loads(body)
            self.spell = bool(values.get("spell", self.spell))
            self.rate = float(values.get("rate", self.rate))
            await _answer(writer, 200, b"{}")
        elif path == "/record":
            record = {"audit": self.audit, "garbage": self.garbage, "bad_signatures": self.bad_signatures}
            await _answer(writer, 200, json.dumps(record).encode())
        elif path == "/audit/v1/events" and method == "POST":
            await self.audit_event(headers, body, writer)
        elif path == "/garbage/v1/events" and method == "POST":
            await self.garbage_event(headers, body, writer)
        else:
            await _answer(writer, 404, b"{}")

    async def audit_event(self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            verify(self.secret, headers, body)
        except SignatureError:
            self.bad_signatures += 1
            await _answer(writer, 401, b"{}")
            return
        event = json.loads(body)
        seen = self.audit.setdefault(event["id"], {"type": event["type"], "subject": event.get("subject"), "n": 0})
        seen["n"] += 1
        await _answer(writer, 200, b'{"status":"ok"}')

    async def garbage_event(self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter) -> None:
        event_id = headers.get("x-kbingest-event-id", "")
        answers = self.garbage.setdefault(event_id, [])
        if poisoned(event_id):
            answers.append("refused")
            await _answer(writer, 410, b'{"error":"this subscriber will never take this event"}')
            return
        if not (self.spell and self.rng.random() < self.rate):
            answers.append("ok")
            await _answer(writer, 200, b'{"status":"ok"}')
            return
        mode = self.rng.choice(GARBAGE)
        answers.append(mode)
        if mode == "huge_5xx":
            await _answer(writer, 503, b"x" * HUGE_BODY_BYTES)
        elif mode == "bad_retry_after":
            value = self.rng.choice(MALFORMED_RETRY_AFTER)
            await _answer(writer, 503, b"{}", extra={"Retry-After": value})
        elif mode == "reset":
            reset(writer)
        elif mode == "stall":
            await asyncio.sleep(STALL_S)
            await _answer(writer, 503, b"{}")
        else:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\npartial")
            await writer.drain()
            reset(writer)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise ValueError("head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length > BODY_LIMIT:
        raise ValueError("body too large")
    body = await reader.readexactly(length) if length else b""
    return method, target.split("?", 1)[0], headers, body


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
    # The header value is written as UTF-8 bytes on purpose: "²" must reach the relay as it would
    # from a misbehaving server, not be refused by a well-behaved HTTP library on our side.
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def serve(port: int, secret: str, seed: int) -> None:
    subscriber = ChaosSubscriber(secret, seed)
    server = await asyncio.start_server(subscriber.handle, "127.0.0.1", port, reuse_address=True, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.secret, args.seed))


if __name__ == "__main__":
    main()
