"""Measurements into the table: per-row figures, the Markdown table, and issue 9's targets."""
from __future__ import annotations

PACED_CHUNKS = 64


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def row_figures(gw: dict, direct: dict) -> dict:
    """Gateway figures and gateway-minus-direct ("added") figures for one case."""
    lat, dlat = gw["latency_ms"], direct["latency_ms"]
    out = {
        "rps": gw["rps"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
        "added_p50_ms": _sub(lat["p50"], dlat["p50"]),
        "added_p99_ms": _sub(lat["p99"], dlat["p99"]),
        "direct_rps": direct["rps"], "non2xx": gw["non2xx"],
        "socket_errors": gw.get("socket_errors") or gw.get("errors") or {},
    }
    if "ttft_ms" in gw:
        out["ttft_p50_ms"] = gw["ttft_ms"]["p50"]
        out["ttft_p99_ms"] = gw["ttft_ms"]["p99"]
        out["added_ttft_p50_ms"] = _sub(gw["ttft_ms"]["p50"], direct.get("ttft_ms", {}).get("p50"))
    if gw.get("tool") == "client" and "gap_ms" in gw:
        g, d = gw["gap_ms"], direct["gap_ms"]
        d_coalesced = direct.get("coalesced_reads", 0)
        complete = set(gw["events_per_stream"]) <= {str(PACED_CHUNKS)}
        out["gap"] = {
            "gateway_p50_ms": g["p50"], "gateway_p99_ms": g["p99"], "gateway_max_ms": g["max"],
            "direct_p50_ms": d["p50"], "direct_p99_ms": d["p99"], "direct_max_ms": d["max"],
            "added_p50_ms": _sub(g["p50"], d["p50"]), "added_p99_ms": _sub(g["p99"], d["p99"]),
            "coalesced_reads": gw["coalesced_reads"],
            "max_events_per_read": gw["max_events_per_read"],
            "direct_coalesced_reads": d_coalesced,
            "events_per_stream": gw["events_per_stream"],
            # None: the client saw coalescing from the upstream itself (it, or the machine, was
            # too busy to read each chunk on time), so the gateway's cannot be judged
            "one_to_one": (complete if gw["coalesced_reads"] == 0 else
                           None if d_coalesced and complete else False),
        }
    return out


def rows_ok(row: dict) -> bool:
    """Every answered request has its row, no request has two, and every request that reached
    the upstream has one (requests cut off by the end of a run before reaching the upstream may
    have none)."""
    floor = max(row["requests_completed"], row.get("upstream_received", 0))
    return floor <= row["ledger_rows"] <= row["requests_sent"]


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _notes(row: dict) -> str:
    notes = []
    if row.get("unavailable"):
        return row["unavailable"]
    if row.get("non2xx"):
        notes.append(f"{row['non2xx']} non-2xx")
    errors = {k: v for k, v in (row.get("socket_errors") or {}).items() if v}
    if errors:
        notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    gap = row.get("gap")
    if gap:
        chunks = "/".join(f"{n}×{k}" for k, n in gap["events_per_stream"].items())
        notes.append(f"gap p50/p99 {_ms(gap['gateway_p50_ms'])}/{_ms(gap['gateway_p99_ms'])} ms "
                     f"(direct {_ms(gap['direct_p50_ms'])}/{_ms(gap['direct_p99_ms'])}; added "
                     f"{_ms(gap['added_p50_ms'], True)}/{_ms(gap['added_p99_ms'], True)}); "
                     f"chunks per stream {chunks}, {gap['coalesced_reads']} coalesced reads "
                     f"(direct {gap['direct_coalesced_reads']})"
                     + {True: "", False: " — NOT 1:1",
                        None: " — inconclusive: direct coalesced too"}[gap["one_to_one"]])
    if row.get("case") == "soak":
        notes.append(f"RSS {row['rss_start_mb']} → {row['rss_end_mb']} MB "
                     f"({row['rss_growth_mb']:+.1f})")
        if row.get("time_capped"):
            notes.append(f"time cap reached before {row['soak_target']} requests")
    if row.get("rows_missing_for_upstream_calls"):
        notes.append(f"{row['rows_missing_for_upstream_calls']} upstream call(s) without a ledger "
                     f"row, e.g. {row['missing_row_request_ids'][0]}")
    cut = row.get("requests_sent", 0) - row.get("requests_completed", 0)
    if cut:
        notes.append(f"{cut} cut off by the end of the run; upstream saw "
                     f"{row.get('upstream_received', '?')}")
    return "; ".join(notes)


def _cpu_cell(row: dict) -> str:
    cpu = row.get("cpu") or {}
    if "gateway_cpu_pct" not in cpu:
        return "– | –"
    per = ""
    if row.get("requests_completed") and cpu.get("elapsed_s"):
        ms = cpu["gateway_cpu_pct"] * cpu["elapsed_s"] * 10 / row["requests_completed"]
        per = f" ({ms:.1f})"
    return f"{cpu['gateway_cpu_pct']:.0f}{per} | {cpu['machine_busy_pct']:.0f}"


def _rows_cell(row: dict) -> str:
    if row.get("unavailable"):
        return "–"
    mark = "" if rows_ok(row) else " ✗"
    return f"{row['ledger_rows']} / {row['requests_sent']}{mark}"


def progress_line(row: dict) -> str:
    if row.get("unavailable"):
        return f"{row['case']:<26} c={row['concurrency']:<3} {row['unavailable']}"
    return (f"{row['case']:<26} c={row['concurrency']:<3} {row['rps']:>8.1f} req/s  "
            f"p50 {_ms(row['p50_ms'])} p99 {_ms(row['p99_ms'])} ms  "
            f"added {_ms(row.get('added_p50_ms'), True)}/{_ms(row.get('added_p99_ms'), True)}  "
            f"rows {_rows_cell(row)}  {_notes(row)}")


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"Benchmark {results['timestamp']} (commit {env['git_commit']}"
        f"{', uncommitted changes' if env['git_dirty'] else ''}; {env['cpus']} CPUs, "
        f"load {env['loadavg_start'][0]:.2f}; uvicorn 1 worker, uvloop + httptools, "
        f"DEBUG {'on' if results['knobs'].get('debug') else 'off'}; "
        f"{env['wrk']}). Latencies in ms; added = gateway − upstream called directly "
        f"with the same tool in the same run.",
        "",
        "| profile | case | conc. | req/s | p50 | p99 | added p50 / p99 | TTFT p50 (added) "
        "| gateway CPU % (ms/req) | machine busy % | peak RSS MB | ledger rows / sent | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for profile in results["profiles"]:
        if profile.get("error"):
            lines.append(f"| {profile['profile']} | – | – | – | – | – | – | – | – | – | – | – | "
                         f"failed: {profile['error'][:200]} |")
            continue
        memory = profile["memory"]
        lines.append(f"| {profile['profile']} | idle | – | – | – | – | – | – | – | – | "
                     f"{memory.get('idle_mb', '–')} | – | RSS after warm-up "
                     f"(at start {memory.get('started_mb', '–')}) |")
        for row in profile["rows"]:
            if row.get("unavailable"):
                lines.append(f"| {row['profile']} | {row['case']} | {row['concurrency']} "
                             f"| – | – | – | – | – | – | – | – | – | {row['unavailable']} |")
                continue
            ttft = ("–" if row.get("ttft_p50_ms") is None else
                    f"{_ms(row['ttft_p50_ms'])} ({_ms(row.get('added_ttft_p50_ms'), True)})")
            added = ("–" if row.get("added_p50_ms") is None else
                     f"{_ms(row['added_p50_ms'], True)} / {_ms(row['added_p99_ms'], True)}")
            lines.append(
                f"| {row['profile']} | {row['case']} | {row['concurrency']} | {row['rps']:.0f} "
                f"| {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {added} | {ttft} "
                f"| {_cpu_cell(row)} "
                f"| {row['peak_rss_mb']} | {_rows_cell(row)} | {_notes(row)} |")
    checks = results.get("targets") or []
    if checks:
        lines += ["", "| profile | target | limit | measured | verdict |", "|---|---|--:|--:|---|"]
        for check in checks:
            verdict = ("met" if check["ok"] else
                       "inconclusive (the client lagged on the direct run too)"
                       if check["ok"] is None
                       else f"missed by {check['miss_by']}")
            lines.append(f"| {check['profile']} | {check['target']} | {check['limit']} "
                         f"| {check['value']} | {verdict} |")
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    """Issue 9's targets, checked per profile (the reference profile is mysql+redis)."""
    checks = []

    def check(profile: str, target: str, value, limit, *, at_most: bool, unit: str) -> None:
        if value is None:
            return
        ok = value <= limit if at_most else value >= limit
        miss = abs(value - limit)
        checks.append({"profile": profile, "target": target, "limit": f"{'≤' if at_most else '≥'} "
                       f"{limit} {unit}", "value": f"{value:.2f} {unit}".replace(".00 ", " "),
                       "ok": ok, "miss_by": "" if ok else f"{miss:.2f} {unit}"})

    for profile in results["profiles"]:
        name = profile["profile"]
        rows = [r for r in profile.get("rows", []) if not r.get("unavailable")]

        def find(case: str, concurrency: int) -> dict | None:
            return next((r for r in rows if r["case"] == case and r["concurrency"] == concurrency),
                        None)

        chat1 = find("chat", 1)
        if chat1:
            check(name, "added latency p50, non-streaming, c=1", chat1["added_p50_ms"], 1.5,
                  at_most=True, unit="ms")
            check(name, "added latency p99, non-streaming, c=1", chat1["added_p99_ms"], 4.0,
                  at_most=True, unit="ms")
        chat16 = find("chat", 16)
        if chat16:
            check(name, "throughput non-streaming, c=16", chat16["rps"], 600, at_most=False,
                  unit="req/s")
        stream16 = find("chat-stream-20", 16)
        if stream16:
            check(name, "throughput streaming 20 chunks, c=16", stream16["rps"], 450,
                  at_most=False, unit="req/s")
        for row in rows:
            if row.get("gap"):
                check(name, f"added inter-chunk gap p99, paced, c={row['concurrency']}",
                      row["gap"]["added_p99_ms"], 1.0, at_most=True, unit="ms")
                one = row["gap"]["one_to_one"]
                checks.append({"profile": name,
                               "target": f"chunks 1:1, paced, c={row['concurrency']}",
                               "limit": "0 coalesced",
                               "value": f"{row['gap']['coalesced_reads']} coalesced (direct "
                                        f"{row['gap']['direct_coalesced_reads']})",
                               "ok": one, "miss_by": "" if one else "not 1:1"})
        check(name, "idle RSS", profile.get("memory", {}).get("idle_mb"), 150, at_most=True,
              unit="MB")
        soak = find("soak", next((r["concurrency"] for r in rows if r["case"] == "soak"), 0))
        if soak:
            check(name, f"RSS growth over the soak ({soak['requests_sent']} requests)",
                  soak["rss_growth_mb"], 5.0, at_most=True, unit="MB")
        mismatched = [f"{r['case']} c={r['concurrency']}: {r['ledger_rows']} rows, "
                      f"{r['requests_sent']} sent, {r['requests_completed']} answered, "
                      f"{r['upstream_received']} reached upstream"
                      for r in rows if not rows_ok(r)]
        if rows:
            checks.append({"profile": name, "target": "ledger rows = requests (answered ≤ rows ≤ "
                           "sent, and every request that reached the upstream has a row)",
                           "limit": "every case", "value": "; ".join(mismatched) or "all equal",
                           "ok": not mismatched, "miss_by": "" if not mismatched else
                           f"{len(mismatched)} case(s)"})
    return checks


def stacks_text(row: dict, top: int = 15) -> str:
    """The py-spy summary of one case, as indented text."""
    spy = row["py_spy"]
    lines = [f"  py-spy {row['case']} c={row['concurrency']}: {spy['samples']} samples "
             f"({spy['file']})", "    inclusive %:"]
    lines += [f"      {pct:5.1f}  {frame}" for frame, pct in spy["inclusive_pct"][:top]]
    lines.append("    self %:")
    lines += [f"      {pct:5.1f}  {frame}" for frame, pct in spy["self_pct"][:top]]
    return "\n".join(lines)
