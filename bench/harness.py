"""The benchmark's moving parts, each in its own process: the fake upstream, the gateway under
uvicorn (uvloop + httptools, 1 worker), wrk and the async client; plus the ledger count and the
gateway's memory, read from outside.

Everything listens and connects on 127.0.0.1 only, and every load run is bounded in time or count.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
LUA = BENCH / "post.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when missing (we run as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: apt-get install -y wrk", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("could not install wrk")
    return found


def http_get_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0
              ) -> tuple[int, str, bytes]:
    """(status, content type, body) of one POST, redirects not followed; HTTP errors are
    answers too (status 0 when there was no answer at all)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, "", str(exc).encode()


def wait_until(predicate, timeout_s: float, what: str,
               proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


class Process:
    """A child process we started, stopped by its own pid only."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_upstream(port: int, log: Path) -> Process:
    proc = Process("fake upstream", [PYTHON, "-m", "bench.upstream", "--port", str(port)],
                   env=dict(os.environ), log=log)
    wait_until(lambda: http_get_ok(f"http://127.0.0.1:{port}/health"), 20, "fake upstream",
               proc.proc)
    return proc


def gateway_command(port: int, app: str = "gateway.asgi:application",
                    workers: int = 1) -> list[str]:
    """The production server: uvicorn, `workers` workers, uvloop + httptools, no access log."""
    return [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log",
            "--lifespan", "off", "--timeout-keep-alive", "75", "--backlog", "2048"]


def start_server(name: str, port: int, env: dict[str, str], log: Path,
                 app: str = "gateway.asgi:application", cmd: list[str] | None = None) -> Process:
    """`cmd` (default: gateway_command) started and ready: its /health answers 200."""
    proc = Process(name, cmd or gateway_command(port, app), env=env, log=log)
    try:
        wait_until(lambda: http_get_ok(f"http://127.0.0.1:{port}/health"), 60, name, proc.proc)
    except RuntimeError:
        print(proc.log_tail(), file=sys.stderr)
        proc.stop()
        raise
    return proc


def manage(args: list[str], env: dict[str, str]) -> str:
    """Run `manage.py ARGS` in a subprocess; its stdout. Raises RuntimeError on failure."""
    result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB (MiB)."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": out.get("VmRSS", 0.0), "hwm_mb": out.get("VmHWM", 0.0)}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server's supervisor and its workers), parents first."""
    out, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as children:
                    queue.extend(int(c) for c in children.read().split())
            except OSError:
                pass
    return out


def worker_pids(pid: int, workers: int) -> tuple[int, ...]:
    """The pids serving requests for a server started with `workers`: the server itself for
    one, else its `workers` worker processes (multiprocessing's spawned children: neither
    uvicorn's supervisor nor multiprocessing's resource tracker serves any)."""
    if workers <= 1:
        return (pid,)

    def spawned() -> list[int]:
        out = []
        for child in process_tree(pid)[1:]:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"spawn_main" in cmdline.read():
                        out.append(child)
            except OSError:
                pass
        return out

    wait_until(lambda: len(spawned()) >= workers, 30, "the server's workers")
    return tuple(spawned()[:workers])


def reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS so the next VmHWM is this case's own (Linux clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


_TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / _TICK, int(fields[12]) / _TICK
    return user + system, system


def _processes_cpu_s(pids: tuple[int, ...]) -> tuple[float, float]:
    times = [_process_cpu_s(pid) for pid in pids]
    return sum(t for t, _ in times), sum(s for _, s in times)


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used by the named processes (percent of one core; `_sys_pct` the kernel's share) and
    by the whole machine (percent of all cores) between start() and stop(): shows who was the
    bottleneck and whether anything else was running."""

    def __init__(self, pids: dict[str, int | tuple[int, ...]]) -> None:
        """`pids`: a name's process, or its processes (their CPU summed)."""
        self.pids = {name: (pid,) if isinstance(pid, int) else pid for name, pid in pids.items()}

    def start(self) -> "CpuMeter":
        self._t = time.monotonic()
        self._cpu = {name: _processes_cpu_s(pids) for name, pids in self.pids.items()}
        self._machine = _machine_ticks()
        return self

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t
        out = {}
        for name, pids in self.pids.items():
            total, system = _processes_cpu_s(pids)
            out[f"{name}_cpu_pct"] = round(100 * (total - self._cpu[name][0]) / elapsed, 1)
            out[f"{name}_sys_pct"] = round(100 * (system - self._cpu[name][1]) / elapsed, 1)
        busy, total = _machine_ticks()
        out["machine_busy_pct"] = round(
            100 * (busy - self._machine[0]) / max(1, total - self._machine[1]), 1)
        out["elapsed_s"] = round(elapsed, 3)
        return out


def machine_busy_pct(seconds: float = 1.0) -> float:
    """Share of all cores busy over the next `seconds`."""
    busy0, total0 = _machine_ticks()
    time.sleep(seconds)
    busy1, total1 = _machine_ticks()
    return round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)


def wait_for_quiet(*, max_wait_s: float, busy_below: float = 20.0, quiet_s: int = 3) -> dict:
    """Wait (up to `max_wait_s`) until the machine has been mostly idle for `quiet_s` seconds,
    so other work (a test run) does not share the cores with the benchmark. Returns what was
    seen; the benchmark runs regardless."""
    started = time.monotonic()
    streak, samples = 0, []
    while time.monotonic() - started < max_wait_s:
        samples.append(machine_busy_pct(1.0))
        streak = streak + 1 if samples[-1] < busy_below else 0
        if streak >= quiet_s:
            break
    return {"waited_s": round(time.monotonic() - started, 1), "quiet": streak >= quiet_s,
            "last_busy_pct": samples[-1] if samples else None}


def upstream_received(port: int) -> int:
    """How many chat requests the fake upstream has received so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.loads(response.read())["requests"]


def upstream_recent_ids(port: int) -> list[str]:
    """The x-request-id of the latest requests the fake upstream received (at most 5,000)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?ids=1", timeout=5) as response:
        return json.loads(response.read())["recent_ids"]


@dataclass(frozen=True)
class Target:
    base: str                       # http://127.0.0.1:PORT
    path: str                       # /v1/chat/completions
    headers: dict[str, str]


def wrk(target: Target, *, body: bytes, concurrency: int, duration_s: float, threads: int = 1,
        limit: int = 0, delay_ms: int = 0, workdir: Path) -> dict:
    """One wrk run; requests started ("sent"), completed, req/s and latency percentiles (ms).
    With `limit`, stop after that many responses (the run still ends after `duration_s`);
    with `delay_ms`, each connection waits that long before each request (a paced load)."""
    limit_file = workdir / f"wrk-limit-{time.monotonic_ns()}"
    env = {**os.environ, "BENCH_PATH": target.path, "BENCH_BODY": body.decode(),
           "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in target.headers.items()),
           "BENCH_LIMIT": str(limit), "BENCH_LIMIT_FILE": str(limit_file),
           "BENCH_DELAY_MS": str(delay_ms)}
    cmd = ["wrk", f"-t{max(1, min(threads, concurrency))}", f"-c{concurrency}",
           f"-d{max(1, round(duration_s))}s", "--timeout", "30s", "-s", str(LUA), target.base]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if limit:
        while proc.poll() is None and not limit_file.exists():
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # wrk then joins its threads and prints the summary
    out, err = proc.communicate(timeout=duration_s + 60)
    limit_file.unlink(missing_ok=True)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): {out}{err}")
    raw = json.loads(line[len("BENCH_JSON "):])
    seconds = raw["duration_us"] / 1e6
    lat = {k: round(v / 1000, 3) for k, v in raw["latency_us"].items()}
    errors = raw["errors"]
    return {
        "tool": "wrk", "sent": raw["sent"], "completed": raw["requests"],
        "elapsed_s": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0,
        "non2xx": errors["status"],
        "socket_errors": {k: v for k, v in errors.items() if k != "status" and v},
        "latency_ms": lat,
    }


def client(target: Target, *, body: bytes, concurrency: int, mode: str,
           duration_s: float = 0.0, count: int = 0) -> dict:
    """One run of bench/client.py in its own process; its JSON summary."""
    cmd = [PYTHON, "-m", "bench.client", "--url", target.base + target.path,
           "--body", body.decode(), "--concurrency", str(concurrency), "--mode", mode]
    if duration_s:
        cmd += ["--duration", str(duration_s)]
    if count:
        cmd += ["--count", str(count)]
    for name, value in target.headers.items():
        cmd += ["--header", f"{name}: {value}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                            timeout=(duration_s or 60) + 120)
    if result.returncode != 0:
        raise RuntimeError(f"bench.client failed: {result.stderr[-2000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["tool"] = "client"
    out["non2xx"] = sum(v for k, v in out["statuses"].items() if not k.startswith("2"))
    return out


class Ledger:
    """Counts rows in usage_usagerecord of the bench database, from outside the gateway."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url

    def count(self) -> int:
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme == "sqlite":
            path = (self.url[len("sqlite:///"):] if self.url.startswith("sqlite:////")
                    else parsed.path)
            with sqlite3.connect(path, timeout=30) as conn:
                return conn.execute("SELECT COUNT(*) FROM usage_usagerecord").fetchone()[0]
        conn = mysql_connect(self.url)
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT COUNT(*) FROM usage_usagerecord")
            return cursor.fetchone()[0]
        finally:
            conn.close()

    def settle(self, *, expected: int, at_least=None, timeout_s: float = 20.0,
               quiet_s: float = 2.0) -> int:
        """The row count once it reaches `expected`, or once it is at least `at_least()` (the
        rows that must exist, e.g. requests the upstream saw) and has not changed for
        `quiet_s`; at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        last, changed = self.count(), time.monotonic()
        while last < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.count()
            if now != last:
                last, changed = now, time.monotonic()
            elif (time.monotonic() - changed >= quiet_s
                  and (at_least is None or last >= at_least())):
                break
        return last

    def missing(self, request_ids: list[str]) -> list[str]:
        """Those of `request_ids` that have no row."""
        wanted = [r for r in request_ids if r]
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join(["?"] * len(chunk))
            sql = f"SELECT request_id FROM usage_usagerecord WHERE request_id IN ({marks})"
            if urllib.parse.urlparse(self.url).scheme == "sqlite":
                path = self.url[len("sqlite:///"):]
                with sqlite3.connect(path, timeout=30) as conn:
                    found.update(r[0] for r in conn.execute(sql, chunk))
            else:
                conn = mysql_connect(self.url)
                try:
                    cursor = conn.cursor()
                    cursor.execute(sql.replace("?", "%s"), chunk)
                    found.update(r[0] for r in cursor.fetchall())
                finally:
                    conn.close()
        return [r for r in wanted if r not in found]


def mysql_connect(url: str, *, database: bool = True):
    import MySQLdb  # requirements-prod.txt

    parsed = urllib.parse.urlparse(url)
    kwargs = {"host": parsed.hostname or "127.0.0.1", "port": parsed.port or 3306,
              "user": urllib.parse.unquote(parsed.username or "root"),
              "passwd": urllib.parse.unquote(parsed.password or "")}
    if database:
        kwargs["db"] = parsed.path.lstrip("/")
    conn = MySQLdb.connect(**kwargs)
    conn.autocommit(True)
    return conn


def mysql_recreate(url: str) -> None:
    """Drop and create the bench database (utf8mb4), so each run starts fresh."""
    name = urllib.parse.urlparse(url).path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unexpected database name {name!r}")
    conn = mysql_connect(url, database=False)
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_pyspy(pid: int, output: Path, duration_s: float) -> subprocess.Popen | None:
    """Sample the gateway with py-spy (collapsed stacks) while a case runs; None if py-spy is
    not installed (`.venv/bin/pip install py-spy`; a profiling tool, not a requirement).
    BENCH_PYSPY_ARGS adds py-spy options (e.g. `--gil`: only the thread holding the GIL)."""
    exe = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    if not Path(exe).exists():
        print("BENCH_PYSPY set but py-spy is not installed: .venv/bin/pip install py-spy",
              flush=True)
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
                             "--duration", str(max(1, round(duration_s))), "--format", "raw",
                             "--output", str(output),
                             *os.environ.get("BENCH_PYSPY_ARGS", "").split()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_stacks(path: Path, top: int = 25) -> dict:
    """Top frames of a py-spy collapsed-stack file: by self samples and by inclusive samples
    (a frame counted once per stack it appears in), as percentages of all samples."""
    selfs: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(f) for f in stack.split(";")]
        selfs[frames[-1]] = selfs.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:top]
        return [(frame, round(100 * n / total, 1)) for frame, n in best]

    return {"samples": total, "self_pct": ranked(selfs), "inclusive_pct": ranked(inclusive)}


def _short_frame(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`: lines merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3.":
                file = "stdlib/" + file.split("/", 1)[-1]
            break
    return f"{name} ({file})"


def innodb_settle(cursor, max_s: float) -> float:
    """Seconds until InnoDB has written back a bulk load's dirty pages (which would compete with
    what is measured next), at most `max_s`, on a DB-API `cursor` of the server: flushing is
    forced (innodb_max_dirty_pages_pct 0 and a high innodb_io_capacity, restored after) until
    1 % of the pool or less is dirty, or the count stops falling for 10 s."""
    started = time.monotonic()
    names = ("innodb_max_dirty_pages_pct", "innodb_io_capacity_max", "innodb_io_capacity")
    cursor.execute("SELECT " + ", ".join(f"@@GLOBAL.{name}" for name in names))
    configured = dict(zip(names, cursor.fetchone()))
    for name, value in zip(names, (0, 40000, 20000)):
        cursor.execute(f"SET GLOBAL {name} = %s", [value])
    lowest, since = None, time.monotonic()
    try:
        while time.monotonic() - started < max_s and time.monotonic() - since < 10:
            cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ("
                           "'Innodb_buffer_pool_pages_dirty', 'Innodb_buffer_pool_pages_total')")
            status = {name: int(value) for name, value in cursor.fetchall()}
            dirty = status["Innodb_buffer_pool_pages_dirty"]
            if dirty <= status["Innodb_buffer_pool_pages_total"] // 100:
                break
            if lowest is None or dirty < lowest:
                lowest, since = dirty, time.monotonic()
            time.sleep(1)
    finally:
        for name in reversed(names):
            cursor.execute(f"SET GLOBAL {name} = %s", [configured[name]])
    return round(time.monotonic() - started, 1)
