"""Embedded S3-compatible server (nanio) bound to 127.0.0.1, run as a child process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.lifetime import die_with_parent

START_TIMEOUT_S = 20.0


class EmbeddedS3Error(RuntimeError):
    """nanio could not be started."""


@dataclass
class EmbeddedS3:
    data_dir: Path
    port: int
    access_key: str
    secret_key: str
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        nanio = shutil.which("nanio", path=str(Path(sys.executable).parent)) or shutil.which("nanio")
        if nanio is None:
            raise EmbeddedS3Error("nanio not found: install nanio==0.1.7 (make install)")
        env = {**os.environ, "NANIO_ACCESS_KEY": self.access_key, "NANIO_SECRET_KEY": self.secret_key}
        log = (self.log_path or self.data_dir.parent / "s3.log").open("ab")
        # Always bind loopback: nanio's default is every interface.
        self._proc = subprocess.Popen(
            [
                nanio,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedS3Error(f"nanio exited with {self._proc.returncode}; see its log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmbeddedS3Error(f"nanio did not listen on 127.0.0.1:{self.port} within {START_TIMEOUT_S:g}s")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def returncode(self) -> int | None:
        """nanio's exit status once it ended; None while it runs (or before ``start``)."""
        return None if self._proc is None else self._proc.poll()

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
