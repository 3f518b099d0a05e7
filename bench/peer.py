"""`BENCH_PEER=litellm make bench` (issue 22): the same cases against the LiteLLM proxy, side by
side with the gateway in one run, and the ratios.

LiteLLM is installed by the bench into its own venv, `.venv/litellm`, from the pinned, hashed
bench/requirements-litellm.lock (never the project's locks), and runs as its CLI starts it (one
uvicorn worker) on 127.0.0.1, routed to the same fake upstream as the gateway, with what the
issue measured it with: no database (so no spend logs, keys or budgets), a master key checked
against the bearer, no callbacks, telemetry off and the model cost map read from the package (no
download). The gateway keeps its ledger, budgets and limits on: the comparison favours the peer.
Its CPU per request is that of the proxy's process (one worker, no children).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

from bench import harness

VENV = harness.ROOT / ".venv" / "litellm"
LOCK = harness.BENCH / "requirements-litellm.lock"
UPSTREAM_KEY = "bench-upstream-secret"
# LiteLLM refuses to start without a strong master key; with one and no database it checks the
# bearer against it (no key lookups, no spend).
PEER_KEY = "sk-" + secrets.token_hex(24)
CASES = ("chat", "chat-stream-20", "messages")

# Everything LiteLLM might otherwise reach out for, switched off.
QUIET_ENV = {
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    # /v1/messages to an OpenAI deployment through chat completions, as the gateway's
    # Anthropic surface does (LiteLLM's default there is the Responses API)
    "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "True",
    "DISABLE_ADMIN_UI": "True",
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def ensure_venv() -> Path:
    """.venv/litellm installed from the lock (re-installed when the lock changes); its python."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text().strip() == digest and python.exists():
        return python
    print(f"installing LiteLLM into {VENV} from {LOCK.name} …", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
    env["PIP_CONFIG_FILE"] = os.devnull
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                    "--require-hashes", "--no-deps", "-r", str(LOCK)], check=True, env=env)
    marker.write_text(digest + "\n")
    return python


def config_yaml(upstream_port: int) -> str:
    models = ["bench-c20", "bench-c64-p20"]
    entries = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: {UPSTREAM_KEY}\n"
        for m in models)
    return (f"model_list:\n{entries}"
            "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
            "  disable_spend_logs: true\n  turn_off_message_logging: true\n"
            "general_settings:\n  disable_spend_logs: true\n  disable_reset_budget: true\n")


def start(upstream_port: int, tmp: Path) -> tuple[harness.Process, int]:
    ensure_venv()
    config = tmp / "litellm.yaml"
    config.write_text(config_yaml(upstream_port))
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "REDIS_", "LITELLM_MASTER_KEY"))}
    env.update(QUIET_ENV)
    env["LITELLM_MASTER_KEY"] = PEER_KEY
    cmd = [str(VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", "1"]
    proc = harness.Process("litellm", cmd, env=env, log=tmp / "litellm.log")
    url = f"http://127.0.0.1:{port}/health/liveliness"
    try:
        harness.wait_until(lambda: harness.http_get_ok(url), 120, "litellm", proc.proc)
    except RuntimeError:
        print(proc.log_tail(40), file=sys.stderr)
        proc.stop()
        raise
    return proc, port


def run(cases: list, knobs, upstream: harness.Process, upstream_port: int, tmp: Path) -> dict:
    """The peer's rows, measured exactly as the gateway's (run.measure, the same direct
    baselines): req/s, latency, added latency, TTFT, CPU per request and RSS."""
    from bench import report, run as bench_run
    from bench.harness import Target

    print("\n== peer litellm", flush=True)
    proc, port = start(upstream_port, tmp)
    result: dict = {"peer": "litellm", "rows": [], "memory": {},
                    "version": _version()}
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"authorization": f"Bearer {PEER_KEY}"}
        targets = {"openai": Target(base, "/v1/chat/completions", auth),
                   "anthropic": Target(base, "/v1/messages",
                                       {**auth, "anthropic-version": "2023-06-01"})}
        for surface, target in targets.items():
            make = bench_run.anthropic_body if surface == "anthropic" else bench_run.openai_body
            ok, reason = bench_run.probe(target, make("bench-c20", stream=False))
            if not ok:
                result.setdefault("unavailable", {})[surface] = reason
        warm = harness.client(targets["openai"],
                              body=bench_run.openai_body("bench-c20", stream=False),
                              concurrency=16, mode="json", duration_s=knobs.warmup_s)
        result["warmup"] = {"sent": warm["sent"]}
        result["memory"]["idle_mb"] = harness.memory_mb(proc.pid)["rss_mb"]
        upstream_target = Target(f"http://127.0.0.1:{upstream_port}", "/v1/chat/completions",
                                 {"authorization": f"Bearer {UPSTREAM_KEY}"})
        baselines: dict = {}
        for case in cases:
            if case.name not in CASES:
                continue
            for concurrency in case.concurrencies:
                row = {"profile": "litellm", "case": case.name, "surface": case.surface,
                       "stream": case.stream, "concurrency": concurrency, "tool": case.tool}
                if case.surface in result.get("unavailable", {}):
                    row["unavailable"] = result["unavailable"][case.surface]
                    result["rows"].append(row)
                    continue
                direct = bench_run.direct_baseline(case, concurrency, upstream_target,
                                                   upstream.pid, knobs, tmp, baselines)
                pids = harness.process_tree(proc.pid)
                meter = harness.CpuMeter({"gateway": pids[-1], "upstream": upstream.pid}).start()
                harness.reset_peak(pids[-1])
                gw = bench_run.measure(case, targets[case.surface], body=case.body(),
                                       concurrency=concurrency, knobs=knobs, workdir=tmp,
                                       direct=False)
                row["cpu"] = meter.stop()
                row.update(report.row_figures(gw, direct))
                memory = harness.memory_mb(pids[-1])
                row.update({"peak_rss_mb": memory["hwm_mb"], "rss_mb": memory["rss_mb"],
                            "requests_sent": gw["sent"], "requests_completed": gw["completed"],
                            "gateway": gw, "direct": direct})
                result["rows"].append(row)
                print("  " + _progress(row), flush=True)
        result["memory"]["end_mb"] = harness.memory_mb(proc.pid)["rss_mb"]
    finally:
        proc.stop()
    return result


def run_safely(cases: list, knobs, upstream: harness.Process, upstream_port: int,
               tmp: Path) -> dict:
    """run(), its failure recorded instead of raised (the gateway's results must not be lost)."""
    try:
        return run(cases, knobs, upstream, upstream_port, tmp)
    except Exception as exc:  # noqa: BLE001 - a failing peer must not lose the gateway's rows
        print(f"peer litellm failed: {exc!r}", file=sys.stderr, flush=True)
        return {"peer": "litellm", "error": repr(exc), "rows": []}


def _version() -> str:
    try:
        out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip()
    except OSError:
        return ""


def _cpu_ms(row: dict) -> float | None:
    cpu = row.get("cpu") or {}
    if not row.get("requests_completed") or "gateway_cpu_pct" not in cpu:
        return None
    return cpu["gateway_cpu_pct"] * cpu["elapsed_s"] * 10 / row["requests_completed"]


def _progress(row: dict) -> str:
    if row.get("unavailable"):
        return f"{row['case']:<26} c={row['concurrency']:<3} {row['unavailable']}"
    cpu = _cpu_ms(row)
    return (f"{row['case']:<26} c={row['concurrency']:<3} {row['rps']:>8.1f} req/s  "
            f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} ms  added "
            f"{row['added_p50_ms']:+.2f}/{row['added_p99_ms']:+.2f}"
            + (f"  TTFT added {row['added_ttft_p50_ms']:+.2f}"
               if row.get("added_ttft_p50_ms") is not None else "")
            + (f"  CPU {cpu:.1f} ms/req" if cpu is not None else "")
            + (f"  {row['non2xx']} non-2xx" if row.get("non2xx") else ""))


def _fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"×{a / b:.1f}"


def markdown(peer: dict, profiles: list[dict]) -> str:
    """Gateway (each profile) against the peer, case by case: req/s, added p50/p99 (and TTFT)
    and CPU per request, with gateway/peer throughput and peer/gateway added-latency ratios."""
    if peer.get("error"):
        return f"peer litellm failed: {peer['error']}"
    lines = [f"### Gateway vs LiteLLM {peer.get('version', '')} (spend tracking off, "
             "no database; the gateway with its ledger, budgets and limits on)", "",
             "| profile | case | conc. | req/s gateway / peer | ratio | added p50 ms gateway / "
             "peer | ratio | added p99 ms gateway / peer | TTFT added gateway / peer | "
             "CPU ms/req gateway / peer |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for prof in profiles:
        rows = {(r["case"], r["concurrency"]): r for r in prof.get("rows", [])}
        for prow in peer.get("rows", []):
            grow = rows.get((prow["case"], prow["concurrency"]))
            if grow is None or grow.get("unavailable") or prow.get("unavailable"):
                continue
            lines.append(
                f"| {prof['profile']} | {prow['case']} | {prow['concurrency']} | "
                f"{grow['rps']:.0f} / {prow['rps']:.0f} | {_ratio(grow['rps'], prow['rps'])} | "
                f"{_fmt(grow['added_p50_ms'])} / {_fmt(prow['added_p50_ms'])} | "
                f"{_ratio(prow['added_p50_ms'], grow['added_p50_ms'])} | "
                f"{_fmt(grow['added_p99_ms'])} / {_fmt(prow['added_p99_ms'])} | "
                f"{_fmt(grow.get('added_ttft_p50_ms'))} / {_fmt(prow.get('added_ttft_p50_ms'))}"
                f" | {_fmt(_cpu_ms(grow), '.1f')} / {_fmt(_cpu_ms(prow), '.1f')} |")
    memory = peer.get("memory", {})
    gw_idle = "/".join(str(p.get("memory", {}).get("idle_mb", "–")) for p in profiles)
    lines += ["", f"Idle RSS: gateway {gw_idle} MB, peer {memory.get('idle_mb', '–')} MB."]
    for surface, reason in peer.get("unavailable", {}).items():
        lines.append(f"Peer {surface} surface: {reason}")
    return "\n".join(lines)
