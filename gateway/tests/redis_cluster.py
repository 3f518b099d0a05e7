"""A Redis Cluster of a test's own: three masters with one replica each, six redis-server
processes on free loopback ports (`--cluster-enabled yes`, each with its cluster config file in
a temp dir), joined with `redis-cli --cluster create ... --cluster-replicas 1`. Stopped by PID.

Each node runs with an append-only file, as production should (the ledger spool uses Redis only
when it persists). `--cluster-node-timeout` is 1000 ms (production: 15000), so a killed master is failed over by
its replica within a few seconds: `wait_promoted` polls `CLUSTER NODES` until the replica
reports itself master and every slot is served again (`CLUSTER INFO`: cluster_state:ok)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

NODE_TIMEOUT_MS = 1000


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too; Redis refuses ports
    above 55535 in cluster mode."""
    while True:
        port = random.randint(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def _command(port: int, *args: str, timeout: float = 1.0) -> str:
    """One inline command over a raw socket; the reply's text (bulk or simple string)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        parts = [f"*{len(args)}\r\n"] + [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        sock.sendall("".join(parts).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                header, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(header[1:]) + 2:
                    break
    if data.startswith(b"$"):
        return data.partition(b"\r\n")[2][:-2].decode()
    return data[1:].strip().decode()


class RedisCluster:
    """Six redis-server processes forming one cluster; `url` names any node (the client
    discovers the rest)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            pytest.skip("redis-server / redis-cli are not installed")
        self.ports = [free_cluster_port() for _ in range(6)]
        self._dir = tempfile.mkdtemp(prefix="gw-redis-cluster-")
        self._processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """A live node's URL: after a test killed a master (pytest may run the failover test
        before others of the module), the next test's clients start from a node that answers."""
        port = next((p for p in self.ports if p in self._processes and self.alive(p)),
                    self.ports[0])
        return f"redis://127.0.0.1:{port}/0"

    def start(self, *, deadline_s: float = 20.0) -> None:
        """Start the six servers, create the cluster, and return once every slot is served.
        When that fails, the servers are stopped before the error is raised."""
        try:
            self._start(deadline_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, deadline_s: float) -> None:
        for port in self.ports:
            self._processes[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "everysec",
                 "--appendfilename", f"appendonly-{port}.aof",
                 "--appenddirname", f"aof-{port}", "--cluster-enabled", "yes",
                 "--cluster-config-file", os.path.join(self._dir, f"nodes-{port}.conf"),
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--dir", self._dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + deadline_s
        for port in self.ports:
            self._until(lambda port=port: self._answers(port), deadline,
                        f"redis-server on port {port} did not answer")
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=deadline_s)
        self._until(lambda: all(self._ok(port) and self._replicas_synced(port)
                                for port in self.ports), deadline,
                    "the cluster did not become ready")

    def nodes(self, port: int | None = None) -> list[dict]:
        """`CLUSTER NODES` as seen from `port` (any live node by default): one dict per node
        with id, port, role (master/slave), master id, and whether it is failed."""
        port = port or next(p for p in self.ports if self.alive(p))
        rows = []
        for line in _command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            flags = fields[2].split(",")
            rows.append({"id": fields[0], "port": int(fields[1].split(":")[1].split("@")[0]),
                         "role": "master" if "master" in flags else "slave",
                         "master_id": fields[3], "failed": "fail" in flags,
                         "slots": fields[8:]})
        return rows

    def masters(self) -> list[int]:
        return sorted(n["port"] for n in self.nodes() if n["role"] == "master" and not n["failed"])

    def replica_of(self, master_port: int) -> int:
        rows = self.nodes()
        master_id = next(n["id"] for n in rows if n["port"] == master_port)
        return next(n["port"] for n in rows if n["master_id"] == master_id)

    def port_for_key(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        live = next(p for p in self.ports if self.alive(p))
        slot = int(_command(live, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes():
            if node["role"] != "master" or node["failed"]:
                continue
            for span in node["slots"]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return node["port"]
        raise LookupError(f"no master serves slot {slot}")

    def alive(self, port: int) -> bool:
        process = self._processes.get(port)
        return process is not None and process.poll() is None

    def kill(self, port: int) -> None:
        """SIGKILL one node, by its PID."""
        process = self._processes[port]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def wait_promoted(self, replica_port: int, *, deadline_s: float = 20.0) -> float:
        """Poll until `replica_port` is a master and the cluster serves every slot again, seen
        from every live node; returns the seconds it took. Raises TimeoutError."""
        started = time.monotonic()
        self._until(lambda: self._role(replica_port) == "master" and all(
            self._ok(p) for p in self.ports if self.alive(p)), started + deadline_s,
            f"replica {replica_port} was not promoted")
        return time.monotonic() - started

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _role(self, port: int) -> str:
        try:
            return self._info(port, "role")
        except OSError:
            return ""

    @staticmethod
    def _info(port: int, field: str, section: str = "replication") -> str:
        for line in _command(port, "INFO", section).splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        return ""

    def _replicas_synced(self, port: int) -> bool:
        if self._info(port, "role") != "slave":
            return True
        return self._info(port, "master_link_status") == "up"

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return _command(port, "PING", timeout=0.5) == "PONG"
        except OSError:
            return False

    @staticmethod
    def _ok(port: int) -> bool:
        try:
            return "cluster_state:ok" in _command(port, "CLUSTER", "INFO", timeout=0.5)
        except OSError:
            return False

    @staticmethod
    def _until(check, deadline: float, message: str) -> None:
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(message)
