"""The extraction sandbox: poison files (endless loop, memory hog, segfault), cancellation, a dead server,
and extraction with the network unreachable."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.processor.extraction import poison, worker
from services.processor.extraction.partition import partition_file
from services.processor.extraction.sandbox import ExtractorPool
from shared.errors import ErrorCode, ProcessingError
from tests.support.corpus import CORPUS, corpus_missing
from tests.support.loop_lag import loop_lags
from tests.support.poll import eventually

MEMORY_BYTES = 2 * 1024**3


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def sample_txt(tmp_path: Path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text("Sandbox check. The extractor still works after a poison file.\n", encoding="utf-8")
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def poison_pool() -> AsyncIterator[ExtractorPool]:
    pool = ExtractorPool(extra_env={poison.TEST_HOOKS_ENV: "1"})
    await pool.warm_up()
    yield pool
    await pool.close()


async def _still_works(pool: ExtractorPool, sample: Path) -> None:
    elements = await pool.extract(str(sample), "text/plain", timeout_s=30, cpu_seconds=30, memory_bytes=MEMORY_BYTES)
    assert "still works" in " ".join(e.text for e in elements)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("media_type", "timeout_s", "cpu_seconds", "code", "says", "within_s"),
    [
        pytest.param(
            poison.TEST_LOOP, 2, 60, ErrorCode.EXTRACT_TIMEOUT, "took longer than", 8, id="endless-loop-wall-clock"
        ),
        pytest.param(poison.TEST_LOOP, 60, 1, ErrorCode.EXTRACT_TIMEOUT, "CPU", 20, id="busy-child-cpu-limit"),
        pytest.param(poison.TEST_OOM, 60, 60, ErrorCode.EXTRACT_CRASHED, "memory", 20, id="unbounded-allocation"),
        pytest.param(poison.TEST_SEGFAULT, 30, 30, ErrorCode.EXTRACT_CRASHED, "SIGSEGV", None, id="segfault"),
    ],
)
async def test_a_poison_file_fails_only_its_child(
    poison_pool: ExtractorPool,
    sample_txt: Path,
    media_type: str,
    timeout_s: float,
    cpu_seconds: int,
    code: ErrorCode,
    says: str,
    within_s: float | None,
) -> None:
    server = poison_pool.server_pid
    started = time.monotonic()
    with pytest.raises(ProcessingError) as caught:
        await poison_pool.extract(
            "/dev/null", media_type, timeout_s=timeout_s, cpu_seconds=cpu_seconds, memory_bytes=MEMORY_BYTES
        )
    assert caught.value.code == code
    assert says in caught.value.message
    if within_s is not None:
        # The limit, not a generous outer deadline, must have stopped the child.
        assert time.monotonic() - started < within_s
    await eventually(lambda: not _children(server or 0), every_s=0.05, what="the poisoned child to be gone")
    await _still_works(poison_pool, sample_txt)
    assert poison_pool.server_pid == server, "a poison file must not cost the warm server"


@pytest.mark.asyncio(loop_scope="module")
async def test_cancelling_an_extraction_kills_its_child(poison_pool: ExtractorPool, sample_txt: Path) -> None:
    server = poison_pool.server_pid or 0
    task = asyncio.create_task(
        poison_pool.extract("/dev/null", poison.TEST_SLEEP, timeout_s=300, cpu_seconds=300, memory_bytes=MEMORY_BYTES)
    )
    await eventually(lambda: bool(_children(server)), every_s=0.05, what="the extraction's child to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not _children(server), every_s=0.05, what="the cancelled extraction's child to be gone")
    await _still_works(poison_pool, sample_txt)


@pytest.mark.asyncio(loop_scope="module")
async def test_the_event_loop_stays_responsive_during_extraction(poison_pool: ExtractorPool) -> None:
    async with loop_lags() as lags:
        with pytest.raises(ProcessingError):
            await poison_pool.extract(
                "/dev/null", poison.TEST_LOOP, timeout_s=1.5, cpu_seconds=60, memory_bytes=MEMORY_BYTES
            )
    assert len(lags) > 50
    assert max(lags) < 0.25


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dead_server_fails_its_jobs_and_is_restarted(poison_pool: ExtractorPool, sample_txt: Path) -> None:
    server = poison_pool.server_pid
    assert server is not None
    task = asyncio.create_task(
        poison_pool.extract("/dev/null", poison.TEST_SLEEP, timeout_s=60, cpu_seconds=60, memory_bytes=MEMORY_BYTES)
    )
    await eventually(lambda: bool(_children(server)), every_s=0.05, what="the extraction's child to start")
    os.kill(server, signal.SIGKILL)
    with pytest.raises(ProcessingError) as caught:
        await task
    assert caught.value.code == ErrorCode.EXTRACT_CRASHED
    await _still_works(poison_pool, sample_txt)
    assert poison_pool.server_pid not in (None, server)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_memory_limit_below_the_warm_baseline_is_refused(poison_pool: ExtractorPool, sample_txt: Path) -> None:
    with pytest.raises(ProcessingError) as caught:
        await poison_pool.extract(str(sample_txt), "text/plain", timeout_s=30, cpu_seconds=30, memory_bytes=64 << 20)
    assert caught.value.code == ErrorCode.INTERNAL_ERROR
    assert "memory limit" in caught.value.message


def test_poison_types_are_not_in_the_production_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(poison.TEST_HOOKS_ENV, raising=False)
    sample = tmp_path / "x.bin"
    sample.write_bytes(b"x")
    for media_type in (*poison.ALL, "audio/wav"):
        with pytest.raises(ProcessingError) as caught:
            partition_file(str(sample), media_type)
        assert caught.value.code == ErrorCode.UNSUPPORTED_MEDIA_TYPE
        job = worker.Job(
            id="x",
            path=str(sample),
            media_type=media_type,
            result_path="",
            log_path="",
            cpu_seconds=1,
            memory_bytes=1,
            file_bytes=1,
        )
        assert worker._extract(job) == {
            "ok": False,
            "code": "unsupported_media_type",
            "message": f"media type {media_type!r} is not supported",
        }


OFFLINE_SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import socket

    _LOG = os.environ["KBINGEST_TEST_NET_LOG"]
    open(os.environ["KBINGEST_TEST_MARKER"], "w").close()


    def _note(what):
        with open(_LOG, "a") as fh:
            fh.write(f"{what}\\n")


    def _loopback(address):
        host = address[0] if isinstance(address, tuple) else address
        return isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127."))


    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo


    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            _note(f"connect {address!r}")
            raise OSError(101, "Network is unreachable (test)")
        return _connect(self, address)


    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            _note(f"connect_ex {address!r}")
            return 101
        return _connect_ex(self, address)


    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host is not None and not _loopback(host):
            _note(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test)")
        return _getaddrinfo(host, *args, **kwargs)


    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    """
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.asyncio
async def test_extraction_works_with_the_network_unreachable(tmp_path: Path) -> None:
    files = {
        "txt/norwich-city.txt": ("text/plain", "is a Welsh former professional footballer"),
        "html/example-10k-1p.html": ("text/html", "Galaxy Gaming, Inc."),
        "docx/docx-tables.docx": (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "Simple uniform table",
        ),
        "pdf/fake-memo.pdf": ("application/pdf", "20,000 bottles of water"),
    }
    if not all((CORPUS / name).exists() for name in files):
        corpus_missing("corpus files")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OFFLINE_SITECUSTOMIZE, encoding="utf-8")
    net_log, marker = tmp_path / "net.log", tmp_path / "sitecustomize-loaded"
    proxy = f"http://127.0.0.1:{_closed_port()}"
    offline_env = {
        "PYTHONPATH": str(site),
        "KBINGEST_TEST_NET_LOG": str(net_log),
        "KBINGEST_TEST_MARKER": str(marker),
        "http_proxy": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    pool = ExtractorPool(extra_env=offline_env)
    try:
        await pool.warm_up()
        assert marker.exists(), "the network-blocking sitecustomize was not loaded in the child"
        for name, (media_type, phrase) in files.items():
            elements = await pool.extract(
                str(CORPUS / name), media_type, timeout_s=60, cpu_seconds=60, memory_bytes=MEMORY_BYTES
            )
            text = " ".join(" ".join(e.text.split()) for e in elements)
            assert phrase in text, name
    finally:
        await pool.close()
    attempts = net_log.read_text(encoding="utf-8").splitlines() if net_log.exists() else []
    assert attempts == [], f"the extractor tried to reach the network: {attempts[:5]}"
