"""Child processes that cannot outlive the process that started them.

``kbingest up`` starts each service in its own session (so a Ctrl-C reaches ``up`` alone and it
stops them in order). The price: if ``up`` itself dies without cleaning up (SIGKILL, OOM killer,
a closed terminal before it handled SIGHUP), its children keep running with no supervisor, holding
ports and CPU. On Linux the kernel can send a signal to a process when its parent dies
(``PR_SET_PDEATHSIG``); services handle SIGTERM as a graceful stop, so that is the signal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

PR_SET_PDEATHSIG: Final = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Loaded in the parent: the child between fork and exec should do as little as possible.
_PRCTL: Final = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (None off Linux)."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died between fork and prctl: then nobody will send the signal.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm
