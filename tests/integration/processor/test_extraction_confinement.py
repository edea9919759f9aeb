"""A hostile file run by the real fork server: it must not see the processor's secrets, reach the
network, write big files or hand back an oversized result (services/processor/extraction/confine.py)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import structlog

from services.processor.extraction import poison
from services.processor.extraction.confine import NOFILE_LIMIT, isolate_network
from services.processor.extraction.sandbox import ExtractorPool
from shared.errors import ErrorCode, ProcessingError
from tests.support.poll import eventually

MEMORY_BYTES = 2 * 1024**3
LIMIT_BYTES = 4 * 1024 * 1024
PR_SET_DUMPABLE = 4
NO_NETNS = "this platform permits no network namespace here (see the extraction.network_not_isolated warning)"
SECRETS = {
    "KBINGEST_DATABASE_URL": "postgresql://kbingest:pg-secret-4711@db/kbingest",
    "KBINGEST_S3_SECRET_KEY": "s3-secret-4711",
    "KBINGEST_RELAY_SECRET": "relay-secret-4711",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-4711",
    "OPENAI_API_KEY": "sk-provider-secret-4711",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hostile_pool() -> AsyncIterator[ExtractorPool]:
    """A pool started while the processor's environment holds credentials, with a small result cap."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        pool = ExtractorPool(extra_env={poison.TEST_HOOKS_ENV: "1"}, max_result_bytes=LIMIT_BYTES)
        await pool.warm_up()
    yield pool
    await pool.close()


def _argument(tmp_path: Path, value: object) -> str:
    path = tmp_path / "argument.txt"
    path.write_text(str(value), encoding="utf-8")
    return str(path)


async def _probe(pool: ExtractorPool, media_type: str, path: str) -> list[str]:
    elements = await pool.extract(path, media_type, timeout_s=60, cpu_seconds=60, memory_bytes=MEMORY_BYTES)
    return [e.text for e in elements]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_child_cannot_read_the_processors_secrets(hostile_pool: ExtractorPool) -> None:
    seen = await _probe(hostile_pool, poison.TEST_ENV, "/dev/null")
    environment = dict(line.split("=", 1) for line in seen)
    leaked = [name for name, value in environment.items() if any(s in value for s in SECRETS.values())]
    assert leaked == []
    assert not set(SECRETS) & set(environment)
    assert {n for n in environment if n.startswith("KBINGEST_")} == {poison.TEST_HOOKS_ENV}
    home = environment["HOME"]
    assert environment["TMPDIR"] == home and Path(home).name.startswith("kbingest-sandbox-")
    assert Path(home).stat().st_mode & 0o077 == 0, "the private dir must not be readable by others"

    # The server was exec'd with the same allow-list: the secrets never entered its memory either.
    server = hostile_pool.server_pid
    assert server is not None
    server_environ = Path(f"/proc/{server}/environ").read_bytes()
    assert not [s for s in SECRETS.values() if s.encode() in server_environ]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_child_cannot_read_the_processors_proc_files(hostile_pool: ExtractorPool) -> None:
    environ, memory = await _probe(hostile_pool, poison.TEST_PEEK_PARENT, "/dev/null")
    assert environ.startswith("refused"), environ
    assert memory.startswith("refused"), memory


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def _accepted_anything(sock: socket.socket) -> bool:
    try:
        connection, _ = sock.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    "probe",
    [poison.TEST_CONNECT, poison.TEST_ESCAPE_NETWORK],
    ids=["open_a_tcp_connection", "rejoin_the_processors_network"],
)
async def test_a_child_cannot_reach_the_network(
    hostile_pool: ExtractorPool, listener: socket.socket, tmp_path: Path, probe: str
) -> None:
    if not hostile_pool.network_isolated:
        pytest.skip(NO_NETNS)
    port = listener.getsockname()[1]
    [outcome] = await _probe(hostile_pool, probe, _argument(tmp_path, f"127.0.0.1:{port}"))
    assert outcome.startswith("refused"), outcome
    assert not _accepted_anything(listener)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_child_cannot_write_a_file_over_the_size_limit(hostile_pool: ExtractorPool, tmp_path: Path) -> None:
    [outcome] = await _probe(hostile_pool, poison.TEST_WRITE, _argument(tmp_path, 2 * LIMIT_BYTES))
    assert outcome.startswith("failed after") and outcome.endswith("EFBIG"), outcome
    assert int(outcome.split()[2]) <= LIMIT_BYTES


@pytest.mark.asyncio(loop_scope="module")
async def test_a_child_may_write_a_file_under_the_limit(hostile_pool: ExtractorPool, tmp_path: Path) -> None:
    [outcome] = await _probe(hostile_pool, poison.TEST_WRITE, _argument(tmp_path, LIMIT_BYTES // 2))
    assert outcome == f"wrote {LIMIT_BYTES // 2} bytes"


@pytest.mark.asyncio(loop_scope="module")
async def test_an_oversized_result_is_refused(hostile_pool: ExtractorPool, tmp_path: Path) -> None:
    with pytest.raises(ProcessingError) as caught:
        await _probe(hostile_pool, poison.TEST_BIG_RESULT, _argument(tmp_path, 2 * LIMIT_BYTES))
    assert caught.value.code == ErrorCode.FILE_TOO_LARGE
    assert "larger than the 4 MiB" in caught.value.message
    assert await _probe(hostile_pool, poison.TEST_BIG_RESULT, _argument(tmp_path, 1000)) == ["x" * 1000]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_result_linked_to_an_endless_file_is_refused(hostile_pool: ExtractorPool) -> None:
    with pytest.raises(ProcessingError) as caught:
        await _probe(hostile_pool, poison.TEST_RESULT_LINK, "/dev/null")
    assert caught.value.code == ErrorCode.EXTRACT_CRASHED
    assert "result.json" in caught.value.message


@pytest.mark.asyncio(loop_scope="module")
async def test_a_child_runs_under_every_limit(hostile_pool: ExtractorPool) -> None:
    elements = await hostile_pool.extract(
        "/dev/null", poison.TEST_LIMITS, timeout_s=60, cpu_seconds=30, memory_bytes=MEMORY_BYTES
    )
    limits = dict(e.text.split("=") for e in elements)
    assert limits == {
        "CPU": "30",
        "AS": str(MEMORY_BYTES),
        "FSIZE": str(LIMIT_BYTES),
        "NOFILE": str(NOFILE_LIMIT),
        "CORE": "0",
    }


BLOCK_UNSHARE = textwrap.dedent(
    """
    import ctypes
    import errno


    class _NoUnshare(ctypes.CDLL):
        def __getattr__(self, name):
            if name != "unshare":
                return super().__getattr__(name)

            def unshare(flags):
                ctypes.set_errno(errno.EPERM)
                return -1

            return unshare


    ctypes.CDLL = _NoUnshare
    """
)


@pytest.mark.asyncio
async def test_without_network_namespaces_extraction_still_works_and_says_so_once(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_UNSHARE, encoding="utf-8")
    sample = tmp_path / "sample.txt"
    sample.write_text("Degraded sandbox. Extraction still works without a network namespace.\n", encoding="utf-8")
    pool = ExtractorPool(extra_env={"PYTHONPATH": str(site)})
    try:
        with structlog.testing.capture_logs() as logs:
            await pool.warm_up()
            assert pool.network_isolated is False
            first = await _probe(pool, "text/plain", str(sample))
            server = pool.server_pid
            assert server is not None
            os.kill(server, signal.SIGKILL)
            await eventually(lambda: pool.server_pid is None, every_s=0.05, what="the pool to notice its server died")
            again = await _probe(pool, "text/plain", str(sample))
            assert pool.server_pid not in (None, server)
    finally:
        await pool.close()
    assert "still works" in " ".join(first + again)
    warnings = [entry for entry in logs if entry["event"] == "extraction.network_not_isolated"]
    assert len(warnings) == 1, warnings
    assert "Operation not permitted" in warnings[0]["reason"]


def test_a_non_root_server_isolates_its_network_through_a_user_namespace() -> None:
    """Production processors rarely run as root: the fallback must still take the network away."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user for the check")
    # Imported lazily by socket; once unprivileged, the child may not be able to read the stdlib.
    "127.0.0.1".encode("idna")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            report = "?"
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                # setuid() made us non-dumpable (an exec'd server is not): /proc/self/*_map would be root's.
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
                reason = isolate_network()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    report = f"connected (isolation: {reason})"
                except OSError as exc:
                    report = f"refused (isolation: {reason}) {exc}"
            except BaseException as exc:  # the forked test child must never return into pytest
                report = f"the check failed: {exc!r}"
            finally:
                os.write(write_end, report.encode())
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            report = reader.read().decode()
        os.waitpid(pid, 0)
    if "isolation: None" not in report:
        pytest.skip(f"user namespaces are not permitted here either: {report}")
    assert report.startswith("refused (isolation: None)"), report
