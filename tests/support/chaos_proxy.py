"""A TCP proxy on 127.0.0.1 that can be cut: the campaign's "vector store unreachable" fault.

In local mode Qdrant lives inside the API process and processors reach it through the API's
internal endpoints (``KBINGEST_API_INTERNAL_URL``). Pointing that URL at this proxy makes the vector
store unreachable for the processors alone while the API keeps serving clients, which is what an
outage of a Qdrant server looks like to them. Cut: open connections are reset and new ones are
reset on accept (a refused connect, not a hang: the processor's internal timeout is 120 s).
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import suppress

from tests.support.asgi import reset

BUFFER_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port`` on a thread of its own."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.cut = False
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self._loop.call_soon_threadsafe(self._reset_all)

    def _reset_all(self) -> None:
        for writer in list(self._open):
            reset(writer)
        self._open.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        )
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            reset(writer)
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open.discard(writer)
            self._open.discard(up_writer)
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(BUFFER_BYTES):
                writer.write(data)
                await writer.drain()
        with suppress(OSError):
            writer.write_eof()
