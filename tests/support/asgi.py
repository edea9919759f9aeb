"""Small pieces for the tests' raw ASGI and asyncio servers (the sinks and subscribers they start)."""

from __future__ import annotations

import asyncio
import socket
import struct
from contextlib import suppress
from typing import Any


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI ``http`` scope, however many messages it came in."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the peer sees ECONNRESET at once instead of a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
