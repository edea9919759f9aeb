"""Read what an extraction child left behind without trusting it: its result file, exit code and stderr.

The child can write anything into its job directory, so a result is read only if it is a regular file
(no symlink, FIFO or device) no bigger than the cap, and a malformed one is a crash, not a processor bug.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

from services.processor.extraction.elements import Element
from services.processor.extraction.worker import EXIT_OUT_OF_MEMORY, EXIT_RESULT_TOO_LARGE
from shared.errors import ErrorCode, ProcessingError

STDERR_TAIL_BYTES: Final = 2000
RESULT_NAME: Final = "result.json"
STDERR_NAME: Final = "stderr.log"


def read_outcome(
    job_dir: Path, exit_code: int, *, cpu_seconds: int, memory_bytes: int, max_result_bytes: int
) -> list[Element]:
    """Turn the child's result file, exit code or signal into elements or a ``ProcessingError``."""
    if exit_code == 0:
        result = _read_result(job_dir / RESULT_NAME, max_result_bytes)
        if result is not None:
            return _parse(result)
    if exit_code == EXIT_RESULT_TOO_LARGE:
        raise _too_large(max_result_bytes)
    if exit_code == -signal.SIGXCPU:
        raise ProcessingError(ErrorCode.EXTRACT_TIMEOUT, f"extraction used more than {cpu_seconds}s of CPU time")
    if exit_code == EXIT_OUT_OF_MEMORY:
        raise ProcessingError(ErrorCode.EXTRACT_CRASHED, f"extraction ran out of memory ({memory_bytes >> 20} MiB)")
    how = f"signal {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit code {exit_code}"
    tail = _tail(job_dir / STDERR_NAME)
    raise ProcessingError(ErrorCode.EXTRACT_CRASHED, f"the extractor died ({how}){': ' + tail if tail else ''}")


def _read_result(path: Path, limit: int) -> Any:
    with _open_untrusted(path) as fh:
        if fh is None:
            return None
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ProcessingError(ErrorCode.EXTRACT_CRASHED, f"the extractor left a malformed result: {exc}") from exc


def _parse(result: Any) -> list[Element]:
    try:
        if result.get("ok"):
            return [Element.from_json(item) for item in result["elements"]]
        failure = ProcessingError(ErrorCode(result["code"]), str(result["message"]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProcessingError(ErrorCode.EXTRACT_CRASHED, f"the extractor left a malformed result: {exc!r}") from exc
    raise failure


def _too_large(limit: int) -> ProcessingError:
    return ProcessingError(
        ErrorCode.FILE_TOO_LARGE,
        f"the extracted text is larger than the {limit >> 20} MiB the processor accepts from one document",
    )


@contextlib.contextmanager
def _open_untrusted(path: Path) -> Iterator[IO[bytes] | None]:
    """A regular file opened without following links (None if absent); anything else is a crash."""
    try:
        # O_NONBLOCK: opening a FIFO planted by the child must not hang the reading thread.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        fd = -1
    except OSError as exc:
        raise ProcessingError(
            ErrorCode.EXTRACT_CRASHED, f"the extractor left an unusable {path.name}: {exc.strerror}"
        ) from exc
    if fd < 0:
        yield None
        return
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProcessingError(ErrorCode.EXTRACT_CRASHED, f"the extractor's {path.name} is not a regular file")
        yield fh


def _tail(path: Path) -> str:
    try:
        with _open_untrusted(path) as fh:
            if fh is None:
                return ""
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - STDERR_TAIL_BYTES))
            return fh.read(STDERR_TAIL_BYTES).decode("utf-8", errors="replace").strip()
    except ProcessingError as exc:
        return exc.message
