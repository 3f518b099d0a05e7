"""The fault suite's stage: a MariaDB and gateway replicas of its own, as subprocesses.

`MariaDB` is a private mariadbd on a free loopback port, its data in a temporary directory, so
a test can stop, kill or freeze it without touching the server other tests share. `Replicas`
starts gateway processes exactly as production does (`python -m uvicorn gateway.asgi:application`)
against that database and a private Redis (gateway/tests/redis_server.py). Configuration goes
through the real commands (`manage.py migrate`, `gateway_apply`, `create_api_key`), and
assertions read the private database directly. Every process is stopped by its PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gateway.tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
DATABASE = "gw_faults"
MODEL = "gpt-fault"
PROVIDER = "faulty"


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process dies (a CI timeout, a kill -9),
    instead of keeping a server running on its own. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_until(condition, *, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns something truthy (returned) or `timeout` seconds pass
    (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s (last: {result!r})")
        time.sleep(interval)


class MariaDB:
    """One mariadbd on 127.0.0.1:<free port>; `url` stays the same across restarts.

    Authentication is off (`--skip-grant-tables`): the server listens on loopback only and
    lives for one test session."""

    def __init__(self, *, server_options: dict[str, str] | None = None) -> None:
        # mariadbd options over the defaults below (name -> value, e.g. a bench's larger
        # "innodb-buffer-pool-size").
        self._options = {"innodb-buffer-pool-size": "64M", "character-set-server": "utf8mb4",
                         "collation-server": "utf8mb4_unicode_ci", **(server_options or {})}
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/{DATABASE}"
        self._dir = Path(tempfile.mkdtemp(prefix="gw-mariadb-"))
        self._process: subprocess.Popen | None = None
        self._log = self._dir / "mariadbd.log"

    def install(self) -> None:
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self._dir / 'data'}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> None:
        """Start the server; return once it accepts a query (within 60 s)."""
        args = ["mariadbd", "--no-defaults", f"--datadir={self._dir / 'data'}",
                f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--socket={self._dir / 'sock'}", f"--pid-file={self._dir / 'pid'}",
                # Its own temporary files: a cleanup of /tmp by anything else must not break a
                # GROUP BY halfway.
                f"--tmpdir={self._dir}", "--skip-grant-tables", "--skip-networking=0",
                *(f"--{name}={value}" for name, value in self._options.items())]
        if os.geteuid() == 0:
            args.append("--user=root")
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                             preexec_fn=die_with_parent)
        wait_until(self._answers, timeout=60, interval=0.1, what=f"mariadbd on {self.port}")

    def _answers(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {self._log.read_text()[-2000:]}")
        try:
            self.query("SELECT 1", database=None)
            return True
        except Exception:  # noqa: BLE001 - any failure to connect means "not yet"
            return False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def connect(self, database: str | None = DATABASE):
        import MySQLdb

        kwargs = {"db": database} if database else {}
        return MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", charset="utf8mb4",
                               connect_timeout=5, autocommit=True, **kwargs)

    def query(self, sql: str, params: tuple = (), *, database: str | None = DATABASE) -> list:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def pause(self) -> None:
        """SIGSTOP: connections and queries hang; nothing is lost."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown; connections are refused until `start`."""
        if self.running:
            os.kill(self._process.pid, signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def operator_env(database_url: str, redis_url: str = "") -> dict[str, str]:
    """The environment an operator's `manage.py` runs with against this stage."""
    return {**os.environ, "DEBUG": "1", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url or "memory://"}


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run `manage.py ARGS` as an operator would; return its stdout (raise on failure)."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def create_api_key(name: str, *options: str, env: dict[str, str]) -> str:
    """`manage.py create_api_key NAME OPTIONS`; returns the secret (its last line)."""
    return manage("create_api_key", name, *options, env=env).strip().splitlines()[-1]


class Replicas:
    """Gateway processes (uvicorn, one worker each) sharing a database and a Redis.

    Each gets its own environment: DEBUG on, the private DATABASE_URL and REDIS_URL, a short
    config poll, and settings that spool ledger rows under this test's own directory (the
    settings module below: GATEWAY_SPOOL_DIR is not read from the environment)."""

    def __init__(self, *, database_url: str, redis_url: str, workdir: Path) -> None:
        self.workdir = workdir
        self.spool_dir = workdir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        (workdir / "faults_settings.py").write_text(
            "from gateway.settings import *  # noqa: F403\n"
            f"GATEWAY_SPOOL_DIR = {str(self.spool_dir)!r}\n")
        self.env = {**os.environ, "DEBUG": "1", "DATABASE_URL": database_url,
                    "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                    "GATEWAY_CONFIG_POLL_S": "0.2", "DJANGO_SETTINGS_MODULE": "faults_settings",
                    "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)])}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.processes: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def start(self, count: int, **env: str) -> list[str]:
        """Start `count` replicas (environment overrides in `env`); return their base URLs once
        each answers /health (within 60 s)."""
        started = []
        for _ in range(count):
            port = free_port()
            log = (self.workdir / f"replica-{port}.log").open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "gateway.asgi:application", "--host",
                 "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
                 "--timeout-graceful-shutdown", "10"],
                cwd=REPO, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)
            log.close()
            self.processes.append(process)
            started.append((process, f"http://127.0.0.1:{port}"))
        for process, url in started:
            wait_until(lambda: self._healthy(process, url), timeout=60, interval=0.1,
                       what=f"gateway replica {url}")
            self.urls.append(url)
        return [url for _, url in started]

    @staticmethod
    def _healthy(process: subprocess.Popen, url: str) -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"gateway replica {url} exited with {process.returncode}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self, url: str) -> None:
        """SIGKILL the replica serving `url`: no drain, no shutdown hook."""
        process = self.processes[self.urls.index(url)]
        process.kill()
        process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:]
                         for path in sorted(self.workdir.glob("replica-*.log")))

    def spooled_on_disk(self) -> int:
        return sum(len(path.read_text().splitlines())
                   for path in self.spool_dir.glob("ledger-*.jsonl*"))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
