"""A throwaway Redis for tests: Debian's ``redis-server`` on a free loopback port, no persistence.

``pause()`` / ``resume()`` freeze it (SIGSTOP/SIGCONT): a Redis that accepts connections but never
answers, the worst case for a client without timeouts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.services.base import Service, ServiceUnavailable, free_port, stop_process, wait_until

INSTALL_HINT = "install it: apt-get install -y redis-server (.ci/run does this as root)"


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Service):
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fluxserve-test-redis-"))
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable(f"redis-server is not on PATH: {INSTALL_HINT}")
        log = self.dir / "redis.log"
        # ``--save ""`` and ``--appendonly no``: nothing is written to disk.
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log)]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _answers_ping(self.port), "redis-server", 15, self._process, log)
        except ServiceUnavailable:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.resume()
        stop_process(self._process)
        self._process = None

    def pause(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
