"""An attacker's HTTP/1.1 client on a raw socket: it streams a huge body until the server answers.

httpx sends the whole body before it reads a response; an attacker does not have to wait, and a
server that answers early (401, 413) must not have read the rest. ``push_body`` sends chunked or
plain bodies, with any (or no) Content-Length, and stops as soon as an answer or a close arrives.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

PIECE = b"[" + b"0," * 32_767 + b"0]"  # ~64 KiB of valid-looking JSON, so nothing fails early by accident
STALL_TIMEOUT_S = 60.0


@dataclass
class Answer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    sent: int

    def json(self) -> Any:
        return json.loads(self.body)


def push_body(
    port: int,
    method: str,
    path: str,
    *,
    total: int,
    headers: dict[str, str] | None = None,
    chunked: bool = True,
    content_length: int | None = None,
) -> Answer:
    """Send up to ``total`` body bytes (chunked, or raw after ``content_length``); return the first answer."""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if chunked:
        head.append("Transfer-Encoding: chunked")
    if content_length is not None:
        head.append(f"Content-Length: {content_length}")
    sock = socket.create_connection(("127.0.0.1", port), timeout=STALL_TIMEOUT_S)
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = _stream(sock, total, chunked)
        return _read_answer(sock, sent)
    finally:
        sock.close()


def _stream(sock: socket.socket, total: int, chunked: bool) -> int:
    sock.setblocking(False)
    sent, pending = 0, b""
    while sent < total or pending:
        readable, writable, _ = select.select([sock], [sock], [], STALL_TIMEOUT_S)
        if readable:
            break  # an answer, or the server closed: either way it stopped reading
        if not writable:
            raise AssertionError(f"the server neither reads the body nor answers ({sent} bytes sent)")
        if not pending:
            piece = PIECE[: total - sent]
            sent += len(piece)
            pending = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
            if chunked and sent >= total:
                pending += b"0\r\n\r\n"
        try:
            pending = pending[sock.send(pending) :]
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    return sent


def _read_answer(sock: socket.socket, sent: int) -> Answer:
    data = b""
    deadline = time.monotonic() + STALL_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            headers = _headers(head)
            if len(body) >= int(headers.get("content-length", "0")):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return Answer(None, {}, b"", sent)
    status = int(head.split(b" ", 2)[1])
    return Answer(status, _headers(head), body, sent)


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
