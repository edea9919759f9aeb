"""Extraction server: leave the network, warm the extractors once, then fork one confined process per job.

Run as ``python -m services.processor.extraction.worker`` by ``sandbox.ExtractorPool``. Protocol:
JSON lines on stdin (``{"op": "run", ...}`` / ``{"op": "kill", "id"}``), JSON lines on the original
stdout (``ready``, ``exited``). A job's result goes to its ``result_path`` as JSON; the exit code
and signal tell the parent how it ended. Everything libraries print goes to stderr.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Final, TextIO

from services.processor.extraction import poison
from services.processor.extraction.confine import confine_child, isolate_network
from services.processor.extraction.partition import partition_file, warm_up_partitioners
from shared.errors import ErrorCode, ProcessingError

EXIT_OUT_OF_MEMORY: Final = 3
EXIT_BAD_JOB: Final = 4
EXIT_RESULT_TOO_LARGE: Final = 5
# How often the server looks for finished jobs while any are running (seconds).
REAP_INTERVAL_S: Final = 0.05


@dataclass
class Job:
    id: str
    path: str
    media_type: str
    result_path: str
    log_path: str
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int
    pid: int = 0

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Job:
        return cls(
            id=str(message["id"]),
            path=str(message["path"]),
            media_type=str(message["media_type"]),
            result_path=str(message["result_path"]),
            log_path=str(message["log_path"]),
            cpu_seconds=int(message["cpu_seconds"]),
            memory_bytes=int(message["memory_bytes"]),
            file_bytes=int(message["file_bytes"]),
        )


def main() -> int:
    """Serve jobs until stdin closes (the parent went away)."""
    status = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    # Stray prints from any library must never corrupt the protocol channel.
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pdfminer", "pypdf", "unstructured"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # First, while single-threaded and before any parser is loaded: children inherit the namespace.
    network_error = isolate_network()
    started = time.monotonic()
    warm_up_partitioners()
    _send(
        status,
        {
            "event": "ready",
            "pid": os.getpid(),
            "network_isolated": network_error is None,
            "network_error": network_error,
            "warm_s": round(time.monotonic() - started, 3),
            "threads": _thread_count(),
            "vm_bytes": _vm_bytes(),
        },
    )
    return _serve(status)


def _serve(status: TextIO) -> int:
    running: dict[int, Job] = {}
    buffer = b""
    while True:
        timeout = REAP_INTERVAL_S if running else None
        readable, _, _ = select.select([0], [], [], timeout)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                _kill_all(running)
                return 0
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    _handle(json.loads(line), running, status)
        _reap(running, status)


def _handle(message: dict[str, Any], running: dict[int, Job], status: TextIO) -> None:
    if message.get("op") == "kill":
        for pid, job in running.items():
            if job.id == message.get("id"):
                # Not reaped yet, so the pid can't have been reused.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return
    job = Job.parse(message)
    pid = os.fork()
    if pid == 0:
        _run_job(job)  # never returns
    job.pid = pid
    running[pid] = job
    _send(status, {"event": "started", "id": job.id, "pid": pid})


def _reap(running: dict[int, Job], status: TextIO) -> None:
    while running:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job = running.pop(pid, None)
        if job is not None:
            _send(status, {"event": "exited", "id": job.id, "exit_code": os.waitstatus_to_exitcode(wait_status)})


def _kill_all(running: dict[int, Job]) -> None:
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in running:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _run_job(job: Job) -> None:
    """In the forked child: isolate, limit, extract, write the result, exit."""
    code = EXIT_BAD_JOB
    try:
        _isolate(job)
        result = _extract(job)
        code = _write_result(job.result_path, result)
    except MemoryError:
        code = EXIT_OUT_OF_MEMORY
    except BaseException:  # the forked child must never return into the server loop
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def _isolate(job: Job) -> None:
    log_fd = os.open(job.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    confine_child(cpu_seconds=job.cpu_seconds, memory_bytes=job.memory_bytes, file_bytes=job.file_bytes)


def _write_result(result_path: str, result: dict[str, Any]) -> int:
    """Write the result atomically; one bigger than RLIMIT_FSIZE is an exit code, not a traceback."""
    tmp = result_path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(result, fh, ensure_ascii=False)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            return EXIT_RESULT_TOO_LARGE
        raise
    os.replace(tmp, result_path)
    return 0


def _extract(job: Job) -> dict[str, Any]:
    try:
        hooked = poison.run(job.media_type, job.path, job.result_path) if poison.enabled() else None
        elements = hooked if hooked is not None else partition_file(job.path, job.media_type)
    except ProcessingError as exc:
        return {"ok": False, "code": exc.code.value, "message": exc.message}
    except MemoryError:
        raise
    except Exception as exc:  # a bug in extraction: reported with its traceback, retryable
        traceback.print_exc()
        return {"ok": False, "code": ErrorCode.INTERNAL_ERROR.value, "message": f"extractor bug: {exc!r}"[:500]}
    return {"ok": True, "elements": [e.to_json() for e in elements]}


def _send(status: TextIO, message: dict[str, Any]) -> None:
    status.write(json.dumps(message) + "\n")


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
