"""What an extraction process may see and do: an allow-listed environment, no network, hard rlimits.

The parent builds the environment (``child_environment``) and execs the fork server with it, so the
processor's secrets never reach the server's memory, let alone a forked child; ``protect_parent``
closes the processor's own /proc files (environ, mem) to them. The server calls ``isolate_network``
once before loading anything (children inherit its network namespace); each forked child calls
``confine_child`` before it touches the untrusted file.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from collections.abc import Mapping
from typing import Final, NoReturn

# Passed through from the processor: locale and timezone change how text is decoded and dated;
# MAGIC locates libmagic's database when it is not in the default place.
PASSTHROUGH_NAMES: Final = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "MAGIC"})
PASSTHROUGH_PREFIXES: Final = ("LC_",)
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# Every library's config/cache lookup (spaCy, Hugging Face, matplotlib, tempfile) lands in the private dir.
PRIVATE_DIR_NAMES: Final = ("HOME", "TMPDIR", "TMP", "TEMP", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")

# Enough for a parser's own files (the warm server's fds are below this and stay valid).
NOFILE_LIMIT: Final = 256

_CLONE_NEWNET: Final = 0x40000000
_CLONE_NEWUSER: Final = 0x10000000
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_DUMPABLE: Final = 4
_PR_CAPBSET_READ: Final = 23
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAP_SETPCAP: Final = 8
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def child_environment(
    source: Mapping[str, str], *, private_dir: str, fixed: Mapping[str, str], python_path: list[str]
) -> dict[str, str]:
    """The whole environment of the extraction server: allow-listed names only, never credentials."""
    env = {
        name: value
        for name, value in source.items()
        if name in PASSTHROUGH_NAMES or name.startswith(PASSTHROUGH_PREFIXES)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(dict.fromkeys(PRIVATE_DIR_NAMES, private_dir))
    env.update(fixed)
    env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
    return env


def protect_parent() -> None:
    """Make the calling process (the processor) non-dumpable, as ssh-agent does.

    Children run as our uid, and a same-uid process may read a dumpable process's /proc/<pid>/environ
    and memory: the allow-listed environment would be worth nothing. A non-dumpable process's /proc
    files need CAP_SYS_PTRACE, which children drop (``confine_child``). Our own /proc/self stays readable.
    """
    if sys.platform.startswith("linux"):
        _prctl(_libc(), _PR_SET_DUMPABLE, 0)


def isolate_network() -> str | None:
    """Move this process into a fresh network namespace (only a down loopback); the reason when not allowed.

    Root (CAP_SYS_ADMIN) can unshare the network alone; other users need a user namespace around it,
    which must happen while the process is still single-threaded (before any library starts threads).
    """
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (platform {sys.platform})"
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0:
        return None
    first = os.strerror(ctypes.get_errno())
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare(CLONE_NEWNET): {first}; with a user namespace: {os.strerror(ctypes.get_errno())}"
    try:
        # Keep our own ids inside the namespace, so files we create and getuid() look the same as before.
        _write_proc("/proc/self/setgroups", b"deny")
        _write_proc("/proc/self/uid_map", f"{uid} {uid} 1".encode())
        _write_proc("/proc/self/gid_map", f"{gid} {gid} 1".encode())
    except OSError as exc:
        # The network is already isolated; only the id mapping failed (ids show as the overflow id).
        return f"network isolated, but the user namespace id map failed: {exc}"
    return None


def _write_proc(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def confine_child(*, cpu_seconds: int, memory_bytes: int, file_bytes: int) -> None:
    """Limits for one forked job: CPU, address space, largest file it may write, open files; no privileges."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # SIGXCPU at the soft limit; the hard limit a second later is SIGKILL if that is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Python ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing the child.
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_LIMIT, NOFILE_LIMIT))
    if sys.platform.startswith("linux"):
        libc = _libc()
        # If the server is killed, its jobs must not live on as orphans.
        _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)
        # No setuid escalation; siblings (same uid) cannot ptrace this job to read another tenant's file.
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
        _prctl(libc, _PR_SET_DUMPABLE, 0)
        _drop_capabilities(libc)


def _drop_capabilities(libc: ctypes.CDLL) -> None:
    """A root child keeps uid 0 but loses every capability: no setns() back into the processor's network,
    no ptrace or /proc of the processor, no override of file permissions, none regained by exec."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    current = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), current) != 0:
        _raise_errno("capget")
    if current[0].effective & (1 << _CAP_SETPCAP):
        cap = 0
        while libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:
            _prctl(libc, _PR_CAPBSET_DROP, cap)
            cap += 1
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        _raise_errno("capset")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, value: int) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        _raise_errno(f"prctl({option})")


def _raise_errno(call: str) -> NoReturn:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{call}: {os.strerror(errno)}")
