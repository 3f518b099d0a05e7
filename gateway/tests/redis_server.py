"""A redis-server of a test's own on a free loopback port, to pause, kill and restart without
touching the Redis other tests share. By default data is kept in memory only (`--save ""`, no
AOF), so a restart comes back empty; with `appendonly=True` it runs as production should
(`--appendonly yes --appendfsync everysec`, docker-compose.yml), and a restart reloads what the
killed server had acknowledged from its data directory, which is kept across restarts."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server subprocess; `url` stays the same across restarts."""

    def __init__(self, *, appendonly: bool = False) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.appendonly = appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="gw-redis-")
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and return once it answers PING (within 10 s)."""
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
             "--dir", self._dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    @property
    def pid(self) -> int:
        return self._process.pid

    def pause(self) -> None:
        """SIGSTOP: connections hang, data is kept."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the data is lost; the port refuses connections until `start`."""
        os.kill(self._process.pid, signal.SIGCONT)
        self._process.kill()
        self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
