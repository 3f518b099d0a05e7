"""`make bench-clients`: which upstream HTTP client a Django async proxy view should use.

A bare Django view (bench/bare/: no apps, no middleware, no gateway features) forwards each POST
to the fake upstream with one shared client: (a) httpx with its own transport, (b) httpx over the
httpx-aiohttp transport, (c) aiohttp directly, and (d) aiohttp behind Django's stock middleware
(the MiddlewareMixin classes gateway/settings.py lists: each hook is a sync_to_async hop). Each
runs under uvicorn (1 worker, uvloop + httptools) and is driven by wrk at 16 connections for
BENCH_COMPARE_S seconds (10); the upstream called directly is the ceiling. Prints a Markdown table
and writes clients-<timestamp>.json and clients-latest.json (in BENCH_RESULTS_DIR, default
bench/results).
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import Target

# (label, client, middleware): the last row measures Django's stock middleware (the list in
# gateway/settings.py) in front of the same aiohttp view.
VARIANTS = (("httpx", "httpx", "none"), ("httpx-aiohttp", "httpx-aiohttp", "none"),
            ("aiohttp", "aiohttp", "none"),
            ("aiohttp + Django's stock middleware", "aiohttp", "django"))
BODY = json.dumps({"model": "bench-c20", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Say something short."}]},
                  separators=(",", ":")).encode()


def main() -> int:
    duration = float(os.environ.get("BENCH_COMPARE_S") or 10)
    concurrency = int(os.environ.get("BENCH_COMPARE_CONCURRENCY") or 16)
    harness.ensure_wrk()
    wait_s = float(os.environ.get("BENCH_WAIT_QUIET_S") or 30)
    before = harness.wait_for_quiet(max_wait_s=wait_s) if wait_s > 0 else None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {"timestamp": stamp, "concurrency": concurrency, "duration_s": duration,
                     "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                     "before_start": before,
                     "clients": {}}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-clients-") as tmpdir:
        tmp = Path(tmpdir)
        upstream_port = harness.free_port()
        upstream = harness.start_upstream(upstream_port, tmp / "upstream.log")
        try:
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
            direct = harness.wrk(Target(f"http://127.0.0.1:{upstream_port}",
                                        "/v1/chat/completions", {}),
                                 body=BODY, concurrency=concurrency, duration_s=duration,
                                 workdir=tmp)
            results["clients"]["upstream directly (ceiling)"] = direct
            print(f"upstream directly: {direct['rps']:.0f} req/s", flush=True)
            for label, kind, middleware in VARIANTS:
                if kind == "httpx-aiohttp" and importlib.util.find_spec("httpx_aiohttp") is None:
                    results["clients"][label] = {"unavailable": "httpx-aiohttp is not installed"}
                    continue
                env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.bare.settings",
                       "BENCH_UPSTREAM_URL": upstream_url, "BENCH_PROXY_CLIENT": kind,
                       "BENCH_BARE_MIDDLEWARE": middleware}
                port = harness.free_port()
                server = harness.start_server(f"bare proxy ({label})", port, env,
                                              tmp / f"bare-{kind}-{middleware}.log",
                                              app="bench.bare.asgi:application")
                try:
                    target = Target(f"http://127.0.0.1:{port}", "/v1/chat/completions", {})
                    harness.wrk(target, body=BODY, concurrency=concurrency, duration_s=1,
                                workdir=tmp)  # warm-up: connections, imports
                    time.sleep(0.5)
                    meter = harness.CpuMeter({"server": server.pid}).start()
                    out = harness.wrk(target, body=BODY, concurrency=concurrency,
                                      duration_s=duration, workdir=tmp)
                    out["cpu"] = meter.stop()
                    out["peak_rss_mb"] = harness.memory_mb(server.pid)["hwm_mb"]
                finally:
                    server.stop()
                results["clients"][label] = out
                print(f"{label}: {out['rps']:.0f} req/s", flush=True)
        finally:
            upstream.stop()
    results["loadavg_end"] = list(os.getloadavg())
    out_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or harness.BENCH / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (out_dir / f"clients-{stamp}.json").write_text(text)
    (out_dir / "clients-latest.json").write_text(text)
    print()
    print(f"Bare Django async proxy view, uvicorn 1 worker (uvloop + httptools), wrk "
          f"{concurrency} connections × {duration:.0f} s, loopback fake upstream, "
          f"{os.cpu_count()} CPUs:")
    print()
    print("| upstream client | req/s | p50 ms | p99 ms | server CPU % (ms/req) | machine busy % "
          "| non-2xx |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for kind, out in results["clients"].items():
        if "unavailable" in out:
            print(f"| {kind} | – | – | – | – | – | {out['unavailable']} |")
            continue
        lat = out["latency_ms"]
        cpu = out.get("cpu")
        cpu_cell = busy = "–"
        if cpu:
            per_request = cpu["server_cpu_pct"] * cpu["elapsed_s"] * 10 / max(1, out["completed"])
            cpu_cell = f"{cpu['server_cpu_pct']:.0f} ({per_request:.2f})"
            busy = f"{cpu['machine_busy_pct']:.0f}"
        print(f"| {kind} | {out['rps']:.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {cpu_cell} "
              f"| {busy} | {out['non2xx']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
