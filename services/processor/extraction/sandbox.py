"""Run ``partition_file`` outside the processor: a warm fork server, one limited process per document.

The server (``worker.py``) imports and warms unstructured once (~5 s), then forks a fresh child per
job, so a poison file costs one child, never the processor, and no job pays the import cost. The parent
only waits on pipes: the event loop never blocks.

Untrusted files run confined (``confine.py``): the server is exec'd, not forked, with an allow-listed
environment and a private HOME/TMPDIR, so the processor's secrets never enter its memory (and no
inherited fd: asyncio closes them); it drops into its own network namespace before loading anything;
each child gets CPU, address-space, file-size and open-file limits; and the result read back is capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from services.processor.extraction.confine import child_environment, protect_parent
from services.processor.extraction.elements import Element
from services.processor.extraction.outcome import RESULT_NAME, STDERR_NAME, read_outcome
from shared.errors import ErrorCode, ProcessingError

log = structlog.get_logger("kbingest.processor.extraction")

PROJECT_ROOT: Final = Path(__file__).resolve().parents[3]
WORKER_MODULE: Final = "services.processor.extraction.worker"

# Set before the child's interpreter starts: no telemetry or model downloads, single-threaded
# numerics (fork-safe, and the embedder keeps the cores), OpenMP threads that sleep when idle.
CHILD_ENV: Final[Mapping[str, str]] = {
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
START_TIMEOUT_S: Final = 120.0
# After a kill, how long to wait for the server to report the child gone (seconds).
KILL_GRACE_S: Final = 10.0
# Largest result (JSON of the elements) read back from a child, and the largest file a child may
# write; above the default upload limit's worth of text, below what would strain the processor.
MAX_RESULT_BYTES: Final = 128 * 1024 * 1024
# The warm server already maps this much address space; a lower RLIMIT_AS would fail every job.
MIN_HEADROOM_BYTES: Final = 256 * 1024 * 1024


@dataclass
class _Server:
    """One running fork server bound to the event loop that started it."""

    loop: asyncio.AbstractEventLoop
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[dict[str, Any]] | None = None
    jobs: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    private_dir: str | None = None
    dead: bool = False
    stopping: bool = False

    @property
    def alive(self) -> bool:
        return not self.dead and not self.loop.is_closed()

    def fail_all(self, message: str) -> None:
        self.dead = True
        error = ProcessingError(ErrorCode.EXTRACT_CRASHED, message)
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # nobody may be waiting; don't log it as "never retrieved"
        for future in self.jobs.values():
            if not future.done():
                future.set_exception(error)

    def kill(self) -> None:
        """Stop the server and (via their parent-death signal) its jobs; safe from any loop."""
        self.dead = True
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)


class ExtractorPool:
    """Sandboxed extraction through one warm fork server, restarted on demand if it dies."""

    def __init__(
        self,
        *,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self._python = python
        self._extra_env = dict(extra_env or {})
        self._max_result_bytes = max_result_bytes
        self._server: _Server | None = None
        self._baseline_vm_bytes = 0
        self._network_isolated: bool | None = None

    @property
    def server_pid(self) -> int | None:
        """Pid of the running fork server (None before the first start or once it died)."""
        server = self._server
        if server is None or server.dead or server.process is None:
            return None
        return server.process.pid

    @property
    def network_isolated(self) -> bool | None:
        """Whether the running server has its own network namespace (None before it is ready)."""
        return self._network_isolated

    async def warm_up(self) -> None:
        """Start the server (if needed) and wait until it has loaded every extractor."""
        await self._ready_server()

    async def extract(
        self, path: str, media_type: str, *, timeout_s: float, cpu_seconds: int, memory_bytes: int
    ) -> list[Element]:
        """Extract ``path`` in a fresh child; raise ``ProcessingError`` with the failure's code."""
        job_dir = Path(tempfile.mkdtemp(prefix="kbingest-extract-"))
        try:
            async with asyncio.timeout(timeout_s):
                server = await self._ready_server()
                self._check_memory(memory_bytes)
                exit_code = await self._run(server, job_dir, path, media_type, cpu_seconds, memory_bytes)
        except TimeoutError as exc:
            raise ProcessingError(ErrorCode.EXTRACT_TIMEOUT, f"extraction took longer than {timeout_s:g}s") from exc
        try:
            return await asyncio.to_thread(
                read_outcome,
                job_dir,
                exit_code,
                cpu_seconds=cpu_seconds,
                memory_bytes=memory_bytes,
                max_result_bytes=self._max_result_bytes,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, job_dir, True)

    async def close(self) -> None:
        """Stop the server; running jobs die with it."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping = True
        server.kill()
        if server.loop is asyncio.get_running_loop() and server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                await server.process.wait()
            if server.reader is not None:
                await asyncio.gather(server.reader, return_exceptions=True)

    def _check_memory(self, memory_bytes: int) -> None:
        if memory_bytes < self._baseline_vm_bytes + MIN_HEADROOM_BYTES:
            raise ProcessingError(
                ErrorCode.INTERNAL_ERROR,
                f"extraction memory limit {memory_bytes >> 20} MiB is below what the warm extractor already "
                f"maps ({self._baseline_vm_bytes >> 20} MiB) plus {MIN_HEADROOM_BYTES >> 20} MiB; raise it",
            )

    async def _run(
        self, server: _Server, job_dir: Path, path: str, media_type: str, cpu_seconds: int, memory_bytes: int
    ) -> int:
        job_id = uuid.uuid4().hex
        done: asyncio.Future[int] = server.loop.create_future()
        server.jobs[job_id] = done
        message = {
            "op": "run",
            "id": job_id,
            "path": str(Path(path).resolve()),
            "media_type": media_type,
            "result_path": str(job_dir / RESULT_NAME),
            "log_path": str(job_dir / STDERR_NAME),
            "cpu_seconds": max(1, int(cpu_seconds)),
            "memory_bytes": int(memory_bytes),
            "file_bytes": self._max_result_bytes,
        }
        try:
            await self._send(server, message)
            return await asyncio.shield(done)
        except BaseException:
            # Timed out, cancelled (stage timeout, lost lease) or the server died: the child must go.
            if not done.done() and server.alive:
                with contextlib.suppress(Exception):
                    await self._send(server, {"op": "kill", "id": job_id})
                    async with asyncio.timeout(KILL_GRACE_S):
                        await asyncio.shield(done)
            raise
        finally:
            server.jobs.pop(job_id, None)

    async def _send(self, server: _Server, message: dict[str, Any]) -> None:
        process = server.process
        if process is None or process.stdin is None or not server.alive:
            raise ProcessingError(ErrorCode.EXTRACT_CRASHED, "the extraction server is not running")
        try:
            process.stdin.write((json.dumps(message) + "\n").encode())
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            server.fail_all("the extraction server died")
            raise ProcessingError(ErrorCode.EXTRACT_CRASHED, "the extraction server died") from exc

    async def _ready_server(self) -> _Server:
        loop = asyncio.get_running_loop()
        server = self._server
        if server is None or not server.alive or server.loop is not loop:
            if server is not None:
                server.kill()
            server = _Server(loop=loop)
            server.ready = loop.create_future()
            self._server = server
            server.reader = loop.create_task(self._start(server), name="extraction-server")
        assert server.ready is not None
        info = await asyncio.shield(server.ready)
        self._baseline_vm_bytes = int(info.get("vm_bytes", 0))
        isolated = bool(info.get("network_isolated"))
        if not isolated and self._network_isolated is None:
            log.warning("extraction.network_not_isolated", reason=info.get("network_error"))
        self._network_isolated = isolated
        return server

    async def _start(self, server: _Server) -> None:
        """Spawn the server, wait for 'ready', then route its events to the waiting jobs until it exits."""
        assert server.ready is not None
        protect_parent()
        server.private_dir = tempfile.mkdtemp(prefix="kbingest-sandbox-")
        try:
            server.process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                WORKER_MODULE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                env=self._child_env(server.private_dir),
                cwd=str(PROJECT_ROOT),
                start_new_session=True,
            )
        except OSError as exc:
            server.fail_all(f"cannot start the extraction server: {exc}")
            await asyncio.to_thread(shutil.rmtree, server.private_dir, True)
            return
        stdout = server.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._route(server, stdout, until_ready=True)
            await self._route(server, stdout, until_ready=False)
        except TimeoutError:
            server.kill()
        finally:
            if server.process.returncode is None:
                server.kill()
            exit_code = await server.process.wait()
            server.fail_all(f"the extraction server exited (exit code {exit_code})")
            await asyncio.to_thread(shutil.rmtree, server.private_dir, True)
            report = log.info if server.stopping else log.warning
            report("extraction.server_exited", exit_code=exit_code)

    async def _route(self, server: _Server, stdout: asyncio.StreamReader, *, until_ready: bool) -> None:
        assert server.ready is not None
        while line := await stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("extraction.server_garbage", line=line[:200].decode(errors="replace"))
                continue
            if event.get("event") == "ready":
                log.info("extraction.server_ready", **{k: v for k, v in event.items() if k != "event"})
                if not server.ready.done():
                    server.ready.set_result(event)
                if until_ready:
                    return
            elif event.get("event") == "exited":
                future = server.jobs.get(str(event.get("id")))
                if future is not None and not future.done():
                    future.set_result(int(event["exit_code"]))

    def _child_env(self, private_dir: str) -> dict[str, str]:
        paths = [str(PROJECT_ROOT), self._extra_env.get("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")]
        return child_environment(
            os.environ, private_dir=private_dir, fixed={**CHILD_ENV, **self._extra_env}, python_path=paths
        )


@functools.cache
def default_pool() -> ExtractorPool:
    """The process-wide pool behind ``extract``/``warm_up``; a composition root may build its own instead."""
    return ExtractorPool()


async def extract(
    path: str,
    media_type: str,
    *,
    timeout_s: float,
    cpu_seconds: int,
    memory_bytes: int,
    pool: ExtractorPool | None = None,
) -> list[Element]:
    """Extract ``path`` in a sandboxed child process (see ``ExtractorPool.extract``)."""
    return await (pool or default_pool()).extract(
        path, media_type, timeout_s=timeout_s, cpu_seconds=cpu_seconds, memory_bytes=memory_bytes
    )


async def warm_up(pool: ExtractorPool | None = None) -> None:
    """Start the extraction server and load every extractor (the first PDF would otherwise cost ~5 s)."""
    await (pool or default_pool()).warm_up()
