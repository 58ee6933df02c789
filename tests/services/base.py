"""What the test services share: free loopback ports, waiting for a process to answer, and the
error that says what to install when a service cannot start."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self


class ServiceUnavailable(RuntimeError):
    """A test service could not start; the message says why and what to install."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float = 30,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``ready`` until it is true; ServiceUnavailable (with the log's tail) when the process
    exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = f"exited with status {process.returncode}" if exited else f"not ready after {timeout:.0f} s"
            tail = f"\n{log_tail(log)}" if log is not None else ""
            raise ServiceUnavailable(f"{what} {why}{tail}")
        time.sleep(0.05)


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class Service:
    """A test service: ``start()`` returns it running, ``close()`` stops it and removes its files;
    ``with Service() as s:`` does both (and cleans up when the start fails half-way)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
