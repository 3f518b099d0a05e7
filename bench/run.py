"""`make bench` (issue 9): the gateway's throughput, latency, stream fidelity, memory and ledger
integrity against a loopback fake upstream, printed as one Markdown table and saved as JSON under
bench/results/ (<UTC timestamp>.json and latest.json).

Profiles: `sqlite` (a fresh SQLite file, no Redis) always; `mysql` (MariaDB database
gateway_bench, recreated, + Redis) when both answer on 127.0.0.1 and mysqlclient is installed.
The upstream is also called directly, with the same tool and body, just before each gateway run
of a case: "added" figures are gateway minus direct.

Knobs (environment): BENCH_DURATION_S (4) per gateway wrk run, BENCH_DIRECT_S (3) per direct
run, BENCH_PACED_S (3) per paced-stream run, BENCH_CONCURRENCY ("1,16,64"), BENCH_TTFT_REQUESTS
(400) and BENCH_TTFT_MAX_S (2) for the streams' time-to-first-token client run,
BENCH_SOAK_REQUESTS (20000), BENCH_SOAK_CONCURRENCY (16), BENCH_SOAK_MAX_S (60: a slow
gateway soaks fewer requests, and the row says so), BENCH_WARMUP_S (2),
BENCH_WRK_THREADS (1), BENCH_WORKERS (1: uvicorn workers; CPU is summed over them, memory and
py-spy are the first one's), BENCH_PROFILES ("sqlite,mysql"; a profile whose services are down is
skipped; "journal" is the mysql profile with GATEWAY_LEDGER_JOURNAL on), BENCH_CASES (comma list of case names to run; default all), BENCH_MYSQL_URL
(mysql://root@127.0.0.1:3306/gateway_bench), BENCH_REDIS_URL (redis://127.0.0.1:6379/0),
BENCH_PYSPY (e.g. "chat:16,chat-stream-20:16": sample the gateway with py-spy during those
cases; collapsed stacks go to the results folder as profile-*.txt, the top frames into the JSON),
BENCH_DEBUG (0: the gateway runs with production settings, DEBUG off, throwaway SECRET_KEY and
encryption key; 1: DEBUG on, which adds Django's debug cursor and query log),
BENCH_RESULTS_DIR (bench/results; point exploratory runs elsewhere), BENCH_WAIT_QUIET_S (30:
first wait up to this long for the machine to be idle for 3 s; the run goes ahead regardless and
each row records how busy the machine was), BENCH_SETTLE_QUIET_S (1: after a case, the ledger
count is final once it reaches the requests sent, or covers every request the upstream saw and
stops changing for this long; BENCH_SETTLE_MAX_S (8) at most), BENCH_PEER (litellm: also run
chat, chat-stream-20 and messages against the LiteLLM proxy and print the ratios, bench/peer.py).
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness, report
from bench.harness import Ledger, Target

PROMPT = [{"role": "user", "content": "Say something short about benchmarks."}]
UPSTREAM_KEY = "bench-upstream-secret"
LOG_PROBLEMS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


@dataclass(frozen=True)
class Knobs:
    duration_s: float = _env_float("BENCH_DURATION_S", 4)
    direct_s: float = _env_float("BENCH_DIRECT_S", 3)
    paced_s: float = _env_float("BENCH_PACED_S", 3)
    concurrency: tuple[int, ...] = tuple(
        int(c) for c in (os.environ.get("BENCH_CONCURRENCY") or "1,16,64").split(","))
    ttft_requests: int = int(_env_float("BENCH_TTFT_REQUESTS", 400))
    ttft_max_s: float = _env_float("BENCH_TTFT_MAX_S", 2)
    soak_requests: int = int(_env_float("BENCH_SOAK_REQUESTS", 20000))
    soak_concurrency: int = int(_env_float("BENCH_SOAK_CONCURRENCY", 16))
    soak_max_s: float = _env_float("BENCH_SOAK_MAX_S", 60)
    warmup_s: float = _env_float("BENCH_WARMUP_S", 2)
    wait_quiet_s: float = _env_float("BENCH_WAIT_QUIET_S", 30)
    settle_quiet_s: float = _env_float("BENCH_SETTLE_QUIET_S", 1)
    settle_max_s: float = _env_float("BENCH_SETTLE_MAX_S", 8)
    wrk_threads: int = int(_env_float("BENCH_WRK_THREADS", 1))
    workers: int = int(_env_float("BENCH_WORKERS", 1))
    profiles: tuple[str, ...] = tuple(
        (os.environ.get("BENCH_PROFILES") or "sqlite,mysql").split(","))
    cases: tuple[str, ...] = tuple(
        c for c in (os.environ.get("BENCH_CASES") or "").split(",") if c)
    debug: bool = os.environ.get("BENCH_DEBUG", "0") not in ("", "0")
    results_dir: Path = Path(os.environ.get("BENCH_RESULTS_DIR") or harness.BENCH / "results")
    pyspy: tuple[str, ...] = tuple(
        c for c in (os.environ.get("BENCH_PYSPY") or "").split(",") if c)
    mysql_url: str = (os.environ.get("BENCH_MYSQL_URL")
                      or "mysql://root@127.0.0.1:3306/gateway_bench")
    redis_url: str = os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/0"

    def wants(self, case: str) -> bool:
        return not self.cases or case in self.cases


def openai_body(model: str, *, stream: bool) -> bytes:
    body: dict = {"model": model, "messages": PROMPT, "max_tokens": 64}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def anthropic_body(model: str, *, stream: bool) -> bytes:
    body: dict = {"model": model, "max_tokens": 64, "messages": PROMPT}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Case:
    name: str            # table label
    surface: str         # openai | anthropic
    model: str
    stream: bool
    tool: str            # wrk | client (paced: gaps need per-chunk arrival times)
    concurrencies: tuple[int, ...]

    def body(self) -> bytes:
        make = anthropic_body if self.surface == "anthropic" else openai_body
        return make(self.model, stream=self.stream)

    def direct_body(self) -> bytes:
        return openai_body(self.model, stream=self.stream)


def cases_for(knobs: Knobs) -> list[Case]:
    c = knobs.concurrency
    mid = tuple(x for x in c if x == 16) or c[-1:]
    return [
        Case("chat", "openai", "bench-c20", False, "wrk", c),
        Case("chat-stream-20", "openai", "bench-c20", True, "wrk", c),
        Case("chat-stream-64-paced-20ms", "openai", "bench-c64-p20", True, "client", c),
        Case("messages", "anthropic", "bench-c20", False, "wrk", c),
        Case("messages-stream-20", "anthropic", "bench-c20", True, "wrk", mid),
    ]


def measure(case: Case, target: Target, *, body: bytes, concurrency: int, knobs: Knobs,
            workdir: Path, direct: bool) -> dict:
    """Throughput and latency (wrk, or the client for the paced stream) plus, for streams, a
    count-bounded client run for time to first token and chunk arrival."""
    mode = "anthropic-sse" if case.surface == "anthropic" and not direct else "openai-sse"
    if case.tool == "client":
        return harness.client(target, body=body, concurrency=concurrency, mode=mode,
                              duration_s=knobs.paced_s)
    out = harness.wrk(target, body=body, concurrency=concurrency,
                      duration_s=knobs.direct_s if direct else knobs.duration_s,
                      threads=knobs.wrk_threads, workdir=workdir)
    if case.stream:
        ttft = harness.client(target, body=body, concurrency=concurrency, mode=mode,
                              count=knobs.ttft_requests, duration_s=knobs.ttft_max_s)
        out["ttft_ms"] = ttft["ttft_ms"]
        out["ttft_run"] = {k: ttft[k] for k in ("sent", "completed", "non2xx", "statuses",
                                                 "events_per_stream", "coalesced_reads")}
        out["sent"] += ttft["sent"]
        out["completed"] += ttft["completed"]
    return out


def direct_baseline(case: Case, concurrency: int, upstream: Target, upstream_pid: int,
                    knobs: Knobs, workdir: Path, cache: dict) -> dict:
    """The upstream called directly with the same tool and body shape, measured just before the
    gateway's run of the case (the machine may be shared: conditions drift); reused within a
    profile by cases that send the upstream the same request."""
    key = (case.model, case.stream, case.tool, concurrency)
    if key not in cache:
        meter = harness.CpuMeter({"upstream": upstream_pid}).start()
        cache[key] = measure(case, upstream, body=case.direct_body(), concurrency=concurrency,
                             knobs=knobs, workdir=workdir, direct=True)
        cache[key]["cpu"] = meter.stop()
    return cache[key]


@dataclass
class Profile:
    name: str
    env: dict[str, str]
    ledger: Ledger
    notes: list[str] = field(default_factory=list)


def routing_yaml(upstream_port: int) -> str:
    models = ["bench-c20", "bench-c64-p20"]
    routes = "\n".join(f"      {m}: {m}" for m in models)
    prices = "\n".join(f'  - model: {m}\n    input: "0.15"\n    output: "0.60"' for m in models)
    return (f"providers:\n  - name: bench-upstream\n    kind: openai\n"
            f"    base_url: http://127.0.0.1:{upstream_port}/v1\n    api_key: {UPSTREAM_KEY}\n"
            f"    timeout_s: 60\n    max_inflight: 4096\n    models:\n{routes}\n"
            f"prices:\n{prices}\n")


def settings_env(knobs: Knobs) -> dict[str, str]:
    """Production settings (DEBUG off: no query log, no debug cursor) with throwaway keys, or
    the development ones with BENCH_DEBUG=1."""
    env = {**os.environ, "GATEWAY_CONFIG_POLL_S": "1", "LOG_LEVEL": "WARNING",
           "PYTHONUNBUFFERED": "1", "DEBUG": "1" if knobs.debug else "0",
           # plain HTTP on loopback stands for the TLS-terminating proxy in front
           "SECURE_SSL_REDIRECT": "0"}
    if not knobs.debug:
        from cryptography.fernet import Fernet

        env["SECRET_KEY"] = secrets.token_urlsafe(48)
        env["GATEWAY_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    return env


def make_profiles(knobs: Knobs, tmp: Path) -> list[Profile]:
    base = settings_env(knobs)
    profiles = []
    for name in knobs.profiles:
        if name == "sqlite":
            url = f"sqlite:///{tmp / 'bench.sqlite3'}"
            profiles.append(Profile("sqlite", {**base, "DATABASE_URL": url, "REDIS_URL": "",
                                               "CELERY_BROKER_URL": ""}, Ledger(url)))
        elif name in ("mysql", "journal"):
            db = urllib.parse.urlparse(knobs.mysql_url)
            redis = urllib.parse.urlparse(knobs.redis_url)
            reachable = (harness.tcp_open(db.hostname or "127.0.0.1", db.port or 3306)
                         and harness.tcp_open(redis.hostname or "127.0.0.1", redis.port or 6379))
            if importlib.util.find_spec("MySQLdb") is None:
                print("skipping mysql+redis: mysqlclient is not installed "
                      "(pip install -r requirements-prod.txt)", flush=True)
                continue
            if not reachable:
                print("skipping mysql+redis: MariaDB or Redis is not reachable", flush=True)
                continue
            env = {**base, "DATABASE_URL": knobs.mysql_url, "REDIS_URL": knobs.redis_url}
            if name == "journal":  # rows journaled in Redis, committed after the response
                env["GATEWAY_LEDGER_JOURNAL"] = "1"
            profiles.append(Profile("mysql+redis" if name == "mysql" else "mysql+redis+journal",
                                    env, Ledger(knobs.mysql_url)))
    return profiles


def prepare(profile: Profile, upstream_port: int, tmp: Path) -> str:
    """Fresh database, migrated; the routing config and an API key (budget and rate limits set
    high enough never to bind). Returns the raw key."""
    if profile.name.startswith("mysql+redis"):
        harness.mysql_recreate(profile.env["DATABASE_URL"])
    harness.manage(["migrate", "--noinput"], profile.env)
    config = tmp / f"routing-{profile.name.replace('+', '-')}.yaml"
    config.write_text(routing_yaml(upstream_port))
    harness.manage(["gateway_apply", str(config)], profile.env)
    out = harness.manage(["create_api_key", "bench", "--budget-usd", "1000000", "--budget-period",
                          "month", "--rpm", "10000000", "--tpm", "1000000000"], profile.env)
    if profile.name.startswith("mysql+redis"):
        _forget_routing_state(profile)
    return out.strip().splitlines()[-1].strip()


def _forget_routing_state(profile: Profile) -> None:
    """Drop the shared routing state (breakers, in-flight leases, WRR) of the bench's own routes,
    which a previous run or test may have left under the same ids; nothing else is touched."""
    import redis

    conn = harness.mysql_connect(profile.env["DATABASE_URL"])
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT id FROM providers_provider")
        providers = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM providers_modelroute")
        routes = [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()
    client = redis.Redis.from_url(profile.env["REDIS_URL"])
    try:
        keys = [f"gw:inflight:{p}" for p in providers] + [f"gw:cb:{r}" for r in routes]
        keys += list(client.scan_iter("gw:wrr:{bench-*"))
        client.delete(*keys)
    finally:
        client.close()


def probe(target: Target, body: bytes) -> tuple[bool, str]:
    """Whether the surface answers 200; else a short reason (a Django 404 page = not available)."""
    status, content_type, data = harness.http_post(target.base + target.path, body, target.headers)
    if status == 200:
        return True, ""
    if status == 404 and "json" not in content_type:
        return False, "not available (HTTP 404: no such endpoint)"
    if 300 <= status < 400:
        return False, f"error: HTTP {status} redirect (SECURE_SSL_REDIRECT?)"
    return False, f"error: HTTP {status} {data[:200].decode(errors='replace')}"


def run_profile(profile: Profile, cases: list[Case], upstream: harness.Process,
                upstream_port: int, knobs: Knobs, tmp: Path) -> dict:
    print(f"\n== profile {profile.name}", flush=True)
    key = prepare(profile, upstream_port, tmp)
    port = harness.free_port()
    log = tmp / f"gateway-{profile.name.replace('+', '-')}.log"
    gateway = harness.start_server(f"gateway ({profile.name})", port, profile.env, log,
                                   cmd=harness.gateway_command(port, workers=knobs.workers))
    result: dict = {"profile": profile.name, "rows": [], "memory": {}, "notes": profile.notes,
                    "workers": knobs.workers}
    try:
        gateway.workers = harness.worker_pids(gateway.pid, knobs.workers)
        pid = gateway.workers[0]  # memory and py-spy: the first worker
        result["memory"]["started_mb"] = harness.memory_mb(pid)["rss_mb"]
        base = f"http://127.0.0.1:{port}"
        targets = {
            "openai": Target(base, "/v1/chat/completions", {"authorization": f"Bearer {key}"}),
            "anthropic": Target(base, "/v1/messages",
                                {"x-api-key": key, "anthropic-version": "2023-06-01"}),
        }
        ok, reason = probe(targets["openai"], openai_body("bench-c20", stream=False))
        if not ok:
            raise RuntimeError(f"the gateway does not serve chat completions: {reason}")
        sent = 1
        warm = harness.client(targets["openai"], body=openai_body("bench-c20", stream=False),
                              concurrency=16, mode="json", duration_s=knobs.warmup_s)
        warm_stream = harness.client(targets["openai"], body=openai_body("bench-c20", stream=True),
                                     concurrency=16, mode="openai-sse", count=200)
        sent += warm["sent"] + warm_stream["sent"]
        rows_before = profile.ledger.settle(expected=sent)
        result["warmup"] = {"sent": sent, "rows": rows_before}
        time.sleep(1.0)
        result["memory"]["idle_mb"] = harness.memory_mb(pid)["rss_mb"]
        print(f"  idle RSS {result['memory']['idle_mb']} MB", flush=True)

        available: dict[str, tuple[bool, str]] = {}
        baselines: dict = {}
        upstream_target = Target(f"http://127.0.0.1:{upstream_port}", "/v1/chat/completions",
                                 {"authorization": f"Bearer {UPSTREAM_KEY}"})
        for case in cases:
            if not knobs.wants(case.name):
                continue
            if case.surface not in available:
                available[case.surface] = (True, "") if case.surface == "openai" else probe(
                    targets[case.surface], case.body())
                if case.surface != "openai":
                    rows_before = profile.ledger.settle(expected=rows_before + 1, timeout_s=3)
            ok, reason = available[case.surface]
            for concurrency in case.concurrencies:
                row = {"profile": profile.name, "case": case.name, "surface": case.surface,
                       "stream": case.stream, "concurrency": concurrency, "tool": case.tool}
                if not ok:
                    row["unavailable"] = reason
                    result["rows"].append(row)
                    print(f"  {case.name:<26} c={concurrency:<3} {reason}", flush=True)
                    continue
                direct = direct_baseline(case, concurrency, upstream_target, upstream.pid, knobs,
                                         tmp, baselines)
                row.update(run_case(profile, case, concurrency, targets[case.surface], direct,
                                    gateway=gateway, upstream=upstream,
                                    upstream_port=upstream_port, rows_before=rows_before,
                                    knobs=knobs, tmp=tmp))
                rows_before += row["ledger_rows"]
                result["rows"].append(row)
                print("  " + report.progress_line(row), flush=True)

        if knobs.wants("soak") and knobs.soak_requests > 0:
            result["rows"].append(soak(profile, targets["openai"], gateway.workers, upstream,
                                       upstream_port, rows_before, knobs, tmp))
            print("  " + report.progress_line(result["rows"][-1]), flush=True)
        result["memory"]["end_mb"] = harness.memory_mb(pid)["rss_mb"]
    finally:
        gateway.stop()
        problems = [ln for ln in log.read_text(errors="replace").splitlines()
                    if any(level in ln for level in LOG_PROBLEMS)]
        result["gateway_log_problems"] = {"count": len(problems), "first": problems[:20]}
    return result


def _size_stable(path: Path) -> bool:
    before = path.stat().st_size if path.exists() else -1
    time.sleep(0.3)
    return before >= 0 and path.stat().st_size == before


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(harness.ROOT))
    except ValueError:
        return str(path)


def run_case(profile: Profile, case: Case, concurrency: int, target: Target, direct: dict, *,
             gateway: harness.Process, upstream: harness.Process, upstream_port: int,
             rows_before: int, knobs: Knobs, tmp: Path) -> dict:
    """One case at one concurrency against the gateway: load, CPU, memory, ledger rows, and
    (BENCH_PYSPY) a py-spy profile."""
    pid = gateway.workers[0]
    meter = harness.CpuMeter({"gateway": gateway.workers, "upstream": upstream.pid}).start()
    seen = harness.upstream_received(upstream_port)
    harness.reset_peak(pid)
    spy = stacks = None
    if f"{case.name}:{concurrency}" in knobs.pyspy:
        knobs.results_dir.mkdir(parents=True, exist_ok=True)
        name = f"{profile.name.replace('+', '-')}-{case.name}-c{concurrency}"
        stacks = knobs.results_dir / f"profile-{time.strftime('%Y%m%dT%H%M%S')}-{name}.txt"
        spy = harness.start_pyspy(pid, stacks,
                                  knobs.duration_s if case.tool == "wrk" else knobs.paced_s)
    gw = measure(case, target, body=case.body(), concurrency=concurrency, knobs=knobs,
                 workdir=tmp, direct=False)
    cpu = meter.stop()
    row: dict = {}
    if spy is not None:
        spy.wait(60)
        try:
            harness.wait_until(lambda: _size_stable(stacks), 10, "py-spy output")
        except RuntimeError:
            pass  # no profile this time; the case's figures stand
        if stacks.exists():
            row["py_spy"] = {"file": _display_path(stacks), **harness.summarize_stacks(stacks)}
    rows_after = profile.ledger.settle(
        expected=rows_before + gw["sent"], quiet_s=knobs.settle_quiet_s,
        timeout_s=knobs.settle_max_s,
        at_least=lambda: rows_before + harness.upstream_received(upstream_port) - seen)
    memory = harness.memory_mb(pid)
    row.update(report.row_figures(gw, direct))
    row.update({"peak_rss_mb": memory["hwm_mb"], "rss_mb": memory["rss_mb"], "cpu": cpu,
                "ledger_rows": rows_after - rows_before, "requests_sent": gw["sent"],
                "requests_completed": gw["completed"],
                "upstream_received": harness.upstream_received(upstream_port) - seen,
                "gateway": gw, "direct": direct})
    row.update(_missing_rows(profile, upstream_port, row))
    if "py_spy" in row:
        print(report.stacks_text({**row, "case": case.name, "concurrency": concurrency}),
              flush=True)
    return row


def soak(profile: Profile, target: Target, pids: tuple[int, ...], upstream: harness.Process,
         upstream_port: int, rows_before: int, knobs: Knobs, tmp: Path) -> dict:
    """`soak_requests` non-streaming requests (or as many as fit in BENCH_SOAK_MAX_S); the
    (first) worker's RSS before and after."""
    pid = pids[0]
    time.sleep(1.0)
    start = harness.memory_mb(pid)
    harness.reset_peak(pid)
    seen = harness.upstream_received(upstream_port)
    meter = harness.CpuMeter({"gateway": pids, "upstream": upstream.pid}).start()
    gw = harness.wrk(target, body=openai_body("bench-c20", stream=False),
                     concurrency=knobs.soak_concurrency, duration_s=knobs.soak_max_s,
                     threads=knobs.wrk_threads, limit=knobs.soak_requests, workdir=tmp)
    cpu = meter.stop()
    rows_after = profile.ledger.settle(
        expected=rows_before + gw["sent"], quiet_s=knobs.settle_quiet_s,
        timeout_s=knobs.settle_max_s,
        at_least=lambda: rows_before + harness.upstream_received(upstream_port) - seen)
    time.sleep(1.0)
    end = harness.memory_mb(pid)
    row = {"profile": profile.name, "case": "soak", "surface": "openai", "stream": False,
           "concurrency": knobs.soak_concurrency, "tool": "wrk",
           "rps": gw["rps"], "p50_ms": gw["latency_ms"]["p50"], "p99_ms": gw["latency_ms"]["p99"],
           "non2xx": gw["non2xx"], "socket_errors": gw["socket_errors"], "cpu": cpu,
           "soak_target": knobs.soak_requests, "time_capped": gw["completed"] < knobs.soak_requests,
           "rss_start_mb": start["rss_mb"], "rss_end_mb": end["rss_mb"],
           "rss_growth_mb": round(end["rss_mb"] - start["rss_mb"], 1),
           "peak_rss_mb": end["hwm_mb"], "rss_mb": end["rss_mb"],
           "ledger_rows": rows_after - rows_before, "requests_sent": gw["sent"],
           "requests_completed": gw["completed"],
           "upstream_received": harness.upstream_received(upstream_port) - seen, "gateway": gw}
    row.update(_missing_rows(profile, upstream_port, row))
    return row


def _missing_rows(profile: Profile, upstream_port: int, row: dict) -> dict:
    """When fewer rows than upstream calls: the request ids the upstream saw that have no row."""
    if row["ledger_rows"] >= row["upstream_received"] or row["upstream_received"] > 5000:
        return {}
    ids = harness.upstream_recent_ids(upstream_port)[-row["upstream_received"]:]
    missing = profile.ledger.missing(ids)
    return {"rows_missing_for_upstream_calls": len(missing),
            "missing_row_request_ids": missing[:20]}


def _scale(knobs: Knobs, upstream_port: int, tmp: Path) -> dict:
    """The `scale` scenario (bench/scale.py): a million keys, key churn, two replicas."""
    from bench import scale

    reason = scale.available()
    if reason:
        print(f"skipping scale: {reason}", flush=True)
        return {"skipped": reason}
    try:
        result = scale.run(base_env=settings_env(knobs), upstream_port=upstream_port,
                           routing_yaml=routing_yaml(upstream_port),
                           body=openai_body("bench-c20", stream=True), tmp=tmp)
    except Exception as exc:  # noqa: BLE001 - a failing scenario must not lose the rest
        print(f"scale failed: {exc!r}", file=sys.stderr, flush=True)
        return {"error": repr(exc)}
    print("\n" + scale.markdown(result), flush=True)
    return result


def _ledger() -> dict:
    """The `ledger` scenario (bench/ledger_scale.py): a big partitioned ledger on MariaDB."""
    from bench import ledger_scale

    reason = ledger_scale.available()
    if reason:
        print(f"skipping ledger: {reason}", flush=True)
        return {"skipped": reason}
    try:
        result = ledger_scale.run()
    except Exception as exc:  # noqa: BLE001 - a failing scenario must not lose the rest
        print(f"ledger failed: {exc!r}", file=sys.stderr, flush=True)
        return {"error": repr(exc)}
    print("\n" + ledger_scale.markdown(result), flush=True)
    return result


def environment() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=harness.ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "wrk": (wrk_version.splitlines() or [""])[0]}


def main() -> int:
    knobs = Knobs()
    harness.ensure_wrk()
    started = time.monotonic()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {"timestamp": stamp, "environment": environment(),
                     "knobs": {k: str(v) if isinstance(v, Path) else v
                               for k, v in vars(knobs).items()
                               if k not in ("mysql_url", "redis_url")},
                     "profiles": []}
    cases = [c for c in cases_for(knobs) if knobs.wants(c.name)]
    if knobs.wait_quiet_s > 0:
        print("waiting for a quiet machine (BENCH_WAIT_QUIET_S)…", flush=True)
        results["environment"]["before_start"] = harness.wait_for_quiet(
            max_wait_s=knobs.wait_quiet_s)
        if not results["environment"]["before_start"]["quiet"]:
            print("  the machine is busy: results will be noisy (see machine busy %)", flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmpdir:
        tmp = Path(tmpdir)
        upstream_port = harness.free_port()
        upstream = harness.start_upstream(upstream_port, tmp / "upstream.log")
        try:
            print(f"fake upstream on 127.0.0.1:{upstream_port}", flush=True)
            for profile in make_profiles(knobs, tmp):
                try:
                    results["profiles"].append(
                        run_profile(profile, cases, upstream, upstream_port, knobs, tmp))
                except Exception as exc:  # noqa: BLE001 - a failing profile must not lose the rest
                    print(f"profile {profile.name} failed: {exc!r}", file=sys.stderr, flush=True)
                    results["profiles"].append({"profile": profile.name, "error": repr(exc),
                                                "rows": [], "memory": {}})
            if os.environ.get("BENCH_PEER") == "litellm":  # issue 22: bench/peer.py
                from bench import peer

                results["peer"] = peer.run_safely(cases, knobs, upstream, upstream_port, tmp)
            if knobs.wants("scale"):
                results["scale"] = _scale(knobs, upstream_port, tmp)
            if knobs.wants("ledger"):
                results["ledger"] = _ledger()
        finally:
            upstream.stop()
    results["environment"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    out = knobs.results_dir
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    (out / f"{stamp}.json").write_text(text)
    (out / "latest.json").write_text(text)
    print("\n" + report.markdown(results))
    if "peer" in results:
        from bench import peer

        print("\n" + peer.markdown(results["peer"], results["profiles"]))
    print(f"\nresults: {out / (stamp + '.json')} (and latest.json); wall {results['wall_s']} s")
    return 0 if all(p.get("error") is None for p in results["profiles"]) else 1


if __name__ == "__main__":
    sys.exit(main())
