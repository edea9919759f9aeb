"""Poison "extractors" for the sandbox's own tests: what a hostile file could make a parser do.

Honoured only when the server was started with ``TEST_HOOKS_ENV=1`` (``ExtractorPool(extra_env=...)``);
the production media-type allow-list never routes these types anywhere. Probes report what they
could do as elements, so a test asserts on the child's view of the world.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import socket
import tempfile
import time
from typing import Final

from services.processor.extraction.elements import Element

TEST_HOOKS_ENV: Final = "KBINGEST_EXTRACT_TEST_HOOKS"
TEST_LOOP: Final = "application/x-kbingest-test-loop"
TEST_SLEEP: Final = "application/x-kbingest-test-sleep"
TEST_OOM: Final = "application/x-kbingest-test-oom"
TEST_SEGFAULT: Final = "application/x-kbingest-test-segfault"
# Probes: the input file carries their argument.
TEST_ENV: Final = "application/x-kbingest-test-env"
TEST_CONNECT: Final = "application/x-kbingest-test-connect"
TEST_WRITE: Final = "application/x-kbingest-test-write"
TEST_BIG_RESULT: Final = "application/x-kbingest-test-big-result"
TEST_RESULT_LINK: Final = "application/x-kbingest-test-result-link"
TEST_LIMITS: Final = "application/x-kbingest-test-limits"
TEST_PEEK_PARENT: Final = "application/x-kbingest-test-peek-parent"
TEST_ESCAPE_NETWORK: Final = "application/x-kbingest-test-escape-network"
ALL: Final = (
    TEST_LOOP,
    TEST_SLEEP,
    TEST_OOM,
    TEST_SEGFAULT,
    TEST_ENV,
    TEST_CONNECT,
    TEST_WRITE,
    TEST_BIG_RESULT,
    TEST_RESULT_LINK,
    TEST_LIMITS,
    TEST_PEEK_PARENT,
    TEST_ESCAPE_NETWORK,
)
CONNECT_TIMEOUT_S: Final = 5.0
LIMIT_NAMES: Final = ("CPU", "AS", "FSIZE", "NOFILE", "CORE")


def enabled() -> bool:
    return os.environ.get(TEST_HOOKS_ENV) == "1"


def run(media_type: str, path: str, result_path: str) -> list[Element] | None:
    """Act out ``media_type`` if it is a poison type; None lets the real extractor run."""
    if media_type == TEST_LOOP:
        while True:
            pass
    if media_type == TEST_SLEEP:
        while True:
            time.sleep(60)
    if media_type == TEST_OOM:
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
    if media_type == TEST_SEGFAULT:
        os.kill(os.getpid(), signal.SIGSEGV)
    if media_type == TEST_ENV:
        return [Element(text=f"{name}={value}", kind="Env") for name, value in sorted(os.environ.items())]
    if media_type == TEST_CONNECT:
        return [Element(text=_connect(_argument(path)), kind="Probe")]
    if media_type == TEST_WRITE:
        return [Element(text=_write(int(_argument(path))), kind="Probe")]
    if media_type == TEST_BIG_RESULT:
        size = int(_argument(path))
        return [Element(text="x" * size, kind="NarrativeText")]
    if media_type == TEST_LIMITS:
        limits = {name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[0] for name in LIMIT_NAMES}
        return [Element(text=f"{name}={value}", kind="Probe") for name, value in limits.items()]
    if media_type == TEST_PEEK_PARENT:
        return [Element(text=_peek(f"/proc/{_processor_pid()}/{name}"), kind="Probe") for name in ("environ", "mem")]
    if media_type == TEST_ESCAPE_NETWORK:
        return [Element(text=_escape_and_connect(_argument(path)), kind="Probe")]
    if media_type == TEST_RESULT_LINK:
        # A hostile child points its result at an endless file and claims success.
        os.symlink("/dev/zero", result_path)
        os._exit(0)
    return None


def _argument(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def _connect(address: str) -> str:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return "connected"
    except OSError as exc:
        return f"refused: {errno.errorcode.get(exc.errno or 0, str(exc))}"


def _write(size: int) -> str:
    chunk = b"\0" * (1024 * 1024)
    written = 0
    try:
        with tempfile.TemporaryFile() as fh:
            while written < size:
                written += fh.write(chunk[: min(len(chunk), size - written)])
                fh.flush()
    except OSError as exc:
        return f"failed after {written} bytes: {errno.errorcode.get(exc.errno or 0, str(exc))}"
    return f"wrote {written} bytes"


def _processor_pid() -> int:
    """The fork server's parent: the processor that holds the credentials."""
    with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _peek(path: str) -> str:
    """Opening is the access check for /proc/<pid>/environ and mem (reading mem at 0 fails anyway)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return f"refused: {errno.errorcode.get(exc.errno or 0, str(exc))}"
    os.close(fd)
    return f"opened {path}"


def _escape_and_connect(address: str) -> str:
    """Join the processor's network namespace (as a root child could with CAP_SYS_ADMIN), then connect."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(f"/proc/{_processor_pid()}/ns/net", os.O_RDONLY)
    except OSError as exc:
        return f"refused: open ns: {errno.errorcode.get(exc.errno or 0, str(exc))}"
    try:
        if libc.setns(fd, 0) != 0:
            return f"refused: setns: {errno.errorcode.get(ctypes.get_errno(), '?')}"
    finally:
        os.close(fd)
    return _connect(address)
