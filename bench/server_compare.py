"""`make bench-servers`: which ASGI server runs the gateway in production, by measurement.

The full gateway (`gateway.asgi:application`, production settings) in front of the loopback fake
upstream, under each server with one worker and no access log:

- `uvicorn-uvloop`: uvicorn with uvloop + httptools, the production command (Makefile, Dockerfile)
- `uvicorn-asyncio`: uvicorn with asyncio + h11, its pure-Python stack
- `daphne`: the Channels server that `runserver` uses (the `daphne` app in INSTALLED_APPS)
- `granian`: `--interface asgi` with its default runtime (Rust HTTP; a supervisor process plus
  one worker process)

Each server gets a fresh database set up by bench/run.py (`make_profiles`, `prepare`: migrated,
routing config, an API key whose limits never bind). Per case, run.py's warm-up (the aiohttp
client: non-streaming for BENCH_WARMUP_S, or 200 streams whose chunk counts are recorded), then
wrk at BENCH_COMPARE_CONCURRENCY connections for BENCH_COMPARE_S seconds. Cases, as in
`make bench`: `chat` (non-streaming) and `chat-stream-20` (20 SSE chunks). Per row: req/s, p50 /
p99, the server's CPU ms per request and peak RSS (both summed over its processes), machine busy
%, and the ledger check (every request that reached the upstream has its row). Profiles:
`sqlite` (no Redis) always, `mysql+redis` when MariaDB and Redis answer on 127.0.0.1.

Graceful shutdown is not measured. uvicorn and granian's `asgi` interface speak the ASGI lifespan
protocol, so on SIGTERM the gateway's shutdown drain (gateway/asgi.py: pending ledger writes,
streams of disconnected clients) runs. daphne 4.2 has no lifespan support: under it the drain
never runs and rows still being written at exit can be lost; fine for `runserver`, not for
production.

Knobs (environment): BENCH_COMPARE_S (8), BENCH_COMPARE_CONCURRENCY (16), BENCH_WARMUP_S (2),
BENCH_SERVERS (comma list of the names above; default all), BENCH_WAIT_QUIET_S (30: before the
run and before each server, wait up to this long for 3 idle seconds; the rows record how busy
the machine was regardless), BENCH_PROFILES, BENCH_MYSQL_URL, BENCH_REDIS_URL, BENCH_DEBUG,
BENCH_SETTLE_QUIET_S, BENCH_SETTLE_MAX_S (as `make bench`), BENCH_RESULTS_DIR (bench/results).
Writes servers-<timestamp>.json and servers-latest.json there and prints a Markdown table.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import harness, report, run
from bench.harness import Target

APP = "gateway.asgi:application"
SERVERS = {
    "uvicorn-uvloop": "uvicorn, uvloop + httptools (production)",
    "uvicorn-asyncio": "uvicorn, asyncio + h11",
    "daphne": "daphne",
    "granian": "granian, ASGI interface",
}
LIFESPAN = {"uvicorn-uvloop": True, "uvicorn-asyncio": True, "daphne": False, "granian": True}
CASES = {case.name: case for case in run.cases_for(run.Knobs(concurrency=(16,)))
         if case.name in ("chat", "chat-stream-20")}


def server_command(server: str, port: int) -> list[str]:
    """The command line of `server` serving the gateway: one worker, no access log, loopback."""
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    if server in ("uvicorn-uvloop", "uvicorn-asyncio"):
        loop, http = ("uvloop", "httptools") if server == "uvicorn-uvloop" else ("asyncio", "h11")
        return [harness.PYTHON, "-m", "uvicorn", APP, *bind, "--workers", "1", "--loop", loop,
                "--http", http, "--no-access-log", "--lifespan", "on",
                "--timeout-graceful-shutdown", "30"]
    if server == "daphne":
        # verbosity 0: no access log (verbosity 1 writes one line per request to stdout)
        return [harness.PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0",
                APP]
    if server == "granian":
        return [harness.PYTHON, "-m", "granian", "--interface", "asgi", *bind, "--workers", "1",
                "--no-access-log", "--log-level", "warning", APP]
    raise ValueError(f"unknown server {server!r}")


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("uvicorn", "uvloop", "httptools", "h11", "daphne", "Twisted", "granian",
                 "Django"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _fresh_database(profile: run.Profile) -> None:
    """Remove the SQLite file so `run.prepare` migrates a new one (it recreates MariaDB's)."""
    url = profile.env["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(path + suffix).unlink(missing_ok=True)


def _memory(pids: list[int]) -> dict[str, float]:
    figures = [harness.memory_mb(pid) for pid in pids]
    return {"rss_mb": round(sum(f["rss_mb"] for f in figures), 1),
            "hwm_mb": round(sum(f["hwm_mb"] for f in figures), 1),
            "per_process_hwm_mb": [f["hwm_mb"] for f in figures]}


def measure_case(case: run.Case, target: Target, pids: list[int], *, profile: run.Profile,
                 upstream_port: int, knobs: run.Knobs, duration_s: float, concurrency: int,
                 tmp: Path) -> dict:
    """Warm-up, then one wrk run of `case`; its figures, the server's CPU and peak RSS, and the
    ledger rows written for it."""
    body = case.body()
    before_warm = profile.ledger.count()
    seen_warm = harness.upstream_received(upstream_port)
    if case.stream:
        warm = harness.client(target, body=body, concurrency=concurrency, mode="openai-sse",
                              count=200, duration_s=30)
    else:
        warm = harness.client(target, body=body, concurrency=concurrency, mode="json",
                              duration_s=knobs.warmup_s)
    rows_before = profile.ledger.settle(
        expected=before_warm + warm["sent"], quiet_s=knobs.settle_quiet_s,
        timeout_s=knobs.settle_max_s,
        at_least=lambda: before_warm + harness.upstream_received(upstream_port) - seen_warm)
    for pid in pids:
        harness.reset_peak(pid)
    seen = harness.upstream_received(upstream_port)
    meter = harness.CpuMeter({f"server{i}": pid for i, pid in enumerate(pids)}).start()
    out = harness.wrk(target, body=body, concurrency=concurrency, duration_s=duration_s,
                      workdir=tmp)
    cpu = meter.stop()
    rows_after = profile.ledger.settle(
        expected=rows_before + out["sent"], quiet_s=knobs.settle_quiet_s,
        timeout_s=knobs.settle_max_s,
        at_least=lambda: rows_before + harness.upstream_received(upstream_port) - seen)
    server_cpu_pct = sum(cpu[f"server{i}_cpu_pct"] for i in range(len(pids)))
    row = {"case": case.name, "rps": out["rps"], "p50_ms": out["latency_ms"]["p50"],
           "p99_ms": out["latency_ms"]["p99"], "non2xx": out["non2xx"],
           "socket_errors": out["socket_errors"],
           "server_cpu_pct": round(server_cpu_pct, 1),
           "cpu_ms_per_request": round(server_cpu_pct * cpu["elapsed_s"] * 10
                                       / max(1, out["completed"]), 2),
           "machine_busy_pct": cpu["machine_busy_pct"], "peak_rss_mb": _memory(pids)["hwm_mb"],
           "memory": _memory(pids), "requests_sent": out["sent"],
           "requests_completed": out["completed"], "ledger_rows": rows_after - rows_before,
           "upstream_received": harness.upstream_received(upstream_port) - seen,
           "warmup": {k: warm.get(k) for k in ("sent", "completed", "statuses",
                                               "events_per_stream")},
           "cpu": cpu, "wrk": out}
    row["ledger_ok"] = report.rows_ok(row)
    if not row["ledger_ok"] and row["upstream_received"] <= 5000:
        ids = harness.upstream_recent_ids(upstream_port)[-row["upstream_received"]:]
        row["missing_row_request_ids"] = profile.ledger.missing(ids)[:20]
    return row


def run_server(server: str, profile: run.Profile, *, upstream_port: int, knobs: run.Knobs,
               duration_s: float, concurrency: int, tmp: Path) -> dict:
    """`server` on a fresh database of `profile`: both cases, startup RSS and log problems."""
    _fresh_database(profile)
    key = run.prepare(profile, upstream_port, tmp)
    port = harness.free_port()
    log = tmp / f"{server}-{profile.name.replace('+', '-')}.log"
    proc = harness.start_server(f"{server} ({profile.name})", port, profile.env, log,
                                cmd=server_command(server, port))
    result: dict = {"server": server, "label": SERVERS[server], "profile": profile.name,
                    "lifespan": LIFESPAN[server], "rows": []}
    try:
        pids = harness.process_tree(proc.pid)
        result["processes"] = len(pids)
        result["started_rss_mb"] = _memory(pids)["rss_mb"]
        target = Target(f"http://127.0.0.1:{port}", "/v1/chat/completions",
                        {"authorization": f"Bearer {key}"})
        ok, reason = run.probe(target, CASES["chat"].body())
        if not ok:
            raise RuntimeError(f"{server} does not serve chat completions: {reason}")
        profile.ledger.settle(expected=1, timeout_s=3)  # the probe's row, before any case counts
        for case in CASES.values():
            row = measure_case(case, target, pids, profile=profile, upstream_port=upstream_port,
                               knobs=knobs, duration_s=duration_s, concurrency=concurrency,
                               tmp=tmp)
            result["rows"].append(row)
            print(f"  {server:<16} {case.name:<15} {row['rps']:>7.0f} req/s  p50 "
                  f"{row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  "
                  f"{row['cpu_ms_per_request']:.2f} CPU ms/req  peak {row['peak_rss_mb']} MB  "
                  f"rows {row['ledger_rows']}/{row['requests_sent']}  "
                  f"busy {row['machine_busy_pct']:.0f} %", flush=True)
    finally:
        proc.stop()
        problems = [ln for ln in log.read_text(errors="replace").splitlines()
                    if any(level in ln for level in run.LOG_PROBLEMS)]
        result["log_problems"] = {"count": len(problems), "first": problems[:20]}
    return result


def markdown(results: dict) -> str:
    lines = [f"Full gateway, production settings, 1 worker per server, wrk "
             f"{results['concurrency']} connections × {results['duration_s']:.0f} s, loopback "
             f"fake upstream, {results['cpus']} CPUs:", "",
             "| profile | server | case | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MB "
             "| machine busy % | ledger rows / sent | lifespan |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for run_ in results["runs"]:
        if "error" in run_:
            lines.append(f"| {run_['profile']} | {run_['label']} | – | – | – | – | – | – | – "
                         f"| {run_['error']} | – |")
            continue
        for row in run_["rows"]:
            rows = f"{row['ledger_rows']} / {row['requests_sent']}"
            if not row["ledger_ok"]:
                rows += f" (MISSING: upstream saw {row['upstream_received']})"
            if row["non2xx"]:
                rows += f", {row['non2xx']} non-2xx"
            lines.append(
                f"| {run_['profile']} | {run_['label']} | {row['case']} | {row['rps']:.0f} "
                f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['cpu_ms_per_request']:.2f} "
                f"| {row['peak_rss_mb']:.0f} | {row['machine_busy_pct']:.0f} | {rows} "
                f"| {'yes' if run_['lifespan'] else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    duration = float(os.environ.get("BENCH_COMPARE_S") or 8)
    concurrency = int(os.environ.get("BENCH_COMPARE_CONCURRENCY") or 16)
    servers = [s for s in (os.environ.get("BENCH_SERVERS") or ",".join(SERVERS)).split(",") if s]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        raise SystemExit(f"unknown BENCH_SERVERS {sorted(unknown)}; choose from {list(SERVERS)}")
    knobs = run.Knobs()
    harness.ensure_wrk()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {"timestamp": stamp, "concurrency": concurrency, "duration_s": duration,
                     "warmup_s": knobs.warmup_s, "cpus": os.cpu_count(),
                     "python": platform.python_version(), "versions": _versions(),
                     "loadavg_start": list(os.getloadavg()), "runs": []}
    if knobs.wait_quiet_s > 0:
        print("waiting for a quiet machine (BENCH_WAIT_QUIET_S)…", flush=True)
        results["before_start"] = harness.wait_for_quiet(max_wait_s=knobs.wait_quiet_s)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-servers-") as tmpdir:
        tmp = Path(tmpdir)
        upstream_port = harness.free_port()
        upstream = harness.start_upstream(upstream_port, tmp / "upstream.log")
        try:
            for profile in run.make_profiles(knobs, tmp):
                print(f"\n== profile {profile.name}", flush=True)
                for server in servers:
                    quiet = (harness.wait_for_quiet(max_wait_s=knobs.wait_quiet_s)
                             if knobs.wait_quiet_s > 0 else None)
                    try:
                        outcome = run_server(server, profile, upstream_port=upstream_port,
                                             knobs=knobs, duration_s=duration,
                                             concurrency=concurrency, tmp=tmp)
                    except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
                        print(f"  {server} failed: {exc!r}", file=sys.stderr, flush=True)
                        outcome = {"server": server, "label": SERVERS[server],
                                   "profile": profile.name, "error": repr(exc)[:300]}
                    outcome["before_start"] = quiet
                    results["runs"].append(outcome)
        finally:
            upstream.stop()
    results["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = round(time.monotonic() - started, 1)
    out_dir = knobs.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    (out_dir / f"servers-{stamp}.json").write_text(text)
    (out_dir / "servers-latest.json").write_text(text)
    print("\n" + markdown(results))
    print(f"\nresults: {out_dir / f'servers-{stamp}.json'} (and servers-latest.json); "
          f"wall {results['wall_s']} s")
    return 0 if all("error" not in r for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
