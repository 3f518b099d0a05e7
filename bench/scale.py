"""`make bench` scenario `scale` (issue 18): a million API keys, key churn, two replicas.

On a MariaDB and a Redis of its own (mariadbd and redis-server started on free loopback ports,
as tests/faults does: never the servers on 3306/6379), with BENCH_SCALE_KEYS keys
bulk-inserted (1,000,000 by default), two gateway replicas (uvicorn, one worker each,
production settings, GATEWAY_CONFIG_POLL_S=1) serve 16 connections of streamed chat
completions (wrk, 8 connections per replica, two keys of the bulk set) for BENCH_SCALE_S
seconds twice: first without key churn, then while a churn process (Django, through
providers.services as the admin and create_api_key do) creates BENCH_SCALE_CHURN_RATE keys a
second and sends each new key's first request to every replica, and once a second revokes one
of them that both replicas hold and sends it to both, one request at a time, until each refuses
it (the time is that of the first refused request's sending; its answer's is recorded too).

Then the same two phases again with a paced load (BENCH_SCALE_PACE_MS, 100: each connection
waits that long before each request, about a third of the load that saturates two cores; 0
skips them): on two shared cores the first pair measures the churn process's and its requests'
share of the CPU as much as the replicas' own cost of a key change; the paced pair leaves CPU
to spare, so what it measures is the change's cost to the requests.

Figures: p99 per replica with and without churn (target: within 10 %), RSS per worker at the
end of each phase (target: <= 150 MB), new keys served on their first request by every replica
(target: all), revocation to first refused request (target: < 1 s). Run alone:
`BENCH_CASES=scale make bench` or `.venv/bin/python -m bench.scale`.

Knobs: BENCH_SCALE_KEYS (1000000), BENCH_SCALE_S (20), BENCH_SCALE_CHURN_RATE (20),
BENCH_SCALE_CONNECTIONS (16), BENCH_SCALE_PACE_MS (100).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import harness

TARGET_P99_RATIO = 1.10
TARGET_RSS_MB = 150.0
TARGET_REVOKE_S = 1.0
INSERT_BATCH = 10_000


def _env_int(name: str, default: int) -> int:
    return int(float(os.environ.get(name) or default))


def available() -> str:
    """Empty when the scenario can run here, else why not."""
    for tool in ("mariadbd", "mariadb-install-db", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import MySQLdb  # noqa: F401 - requirements-prod.lock
    except ImportError:
        return "mysqlclient is not installed (requirements-prod.lock)"
    return ""


# --- children: Django processes against the private database ------------------------------------

def _django() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    django.setup()


def _insert(count: int, load_keys_file: Path) -> None:
    """Bulk-insert `count` keys with secrets derived from a per-run seed; the first two
    secrets go to `load_keys_file` (the load's keys). Prints seconds taken."""
    _django()
    import secrets

    from providers.keys import api_key_hash, api_key_prefix
    from providers.models import ApiKey

    seed = secrets.token_hex(8)
    started = time.monotonic()
    raws = []
    for start in range(0, count, INSERT_BATCH):
        batch = []
        for i in range(start, min(count, start + INSERT_BATCH)):
            raw = f"gw-scale-{seed}-{i:07d}"
            if i < 2:
                raws.append(raw)
            batch.append(ApiKey(name=f"scale-{i}", prefix=api_key_prefix(raw),
                                key_hash=api_key_hash(raw)))
        ApiKey.objects.bulk_create(batch)
    load_keys_file.write_text("\n".join(raws))
    print(json.dumps({"inserted": ApiKey.objects.count(),
                      "seconds": round(time.monotonic() - started, 1)}))


def _churn(urls: list[str], rate: float, duration_s: float) -> None:
    """Create `rate` keys a second for `duration_s` through providers.services; send each new
    key's first request to every replica; once a second, revoke a key both replicas just
    served and time until both refuse it. Prints one JSON summary."""
    _django()
    import asyncio

    import httpx

    from providers.models import ApiKey
    from providers.services import api_key_create, api_key_revoke

    body = {"model": "bench-c20", "max_tokens": 16,
            "messages": [{"role": "user", "content": "first request"}]}
    first_statuses: list[list[int]] = []
    revoke_s: list[float] = []
    answered_s: list[float] = []
    revoke_failures: list[str] = []

    sent_to = {url: 0 for url in urls}

    async def status(client: httpx.AsyncClient, url: str, raw: str) -> int:
        sent_to[url] += 1
        response = await client.post(f"{url}/v1/chat/completions", json=body,
                                     headers={"authorization": f"Bearer {raw}"})
        return response.status_code

    def client_from(address: str) -> httpx.AsyncClient:
        # A client address of its own: the per-address lockout (30 refused keys a minute)
        # must not count the refusals of one revoked key's client against the others.
        return httpx.AsyncClient(timeout=30, transport=httpx.AsyncHTTPTransport(
            local_address=address, limits=httpx.Limits(max_connections=64)))

    async def refused_after(client: httpx.AsyncClient, url: str, raw: str,
                            t0: float) -> tuple[float, float]:
        """(when the first request that `url` refuses was sent, when its 401 arrived), in
        seconds after `t0`; requests go one at a time, so every one sent before was served.
        On a busy machine the second includes the request's own latency."""
        while (sent := time.monotonic()) - t0 < 5.0:
            if await status(client, url, raw) == 401:
                return sent - t0, time.monotonic() - t0
        return float("inf"), float("inf")

    async def one(client: httpx.AsyncClient, n: int) -> None:
        key, raw = await asyncio.to_thread(api_key_create, name=f"churn-{n}", actor="bench")
        statuses = await asyncio.gather(*(status(client, url, raw) for url in urls))
        first_statuses.append(list(statuses))
        if n % round(rate) == 0 and statuses == [200] * len(urls):
            await asyncio.to_thread(
                lambda: api_key_revoke(key=ApiKey.objects.get(pk=key.pk), actor="bench"))
            t0 = time.monotonic()
            async with client_from(f"127.0.1.{n // round(rate) % 250 + 1}") as prober:
                times = await asyncio.gather(*(refused_after(prober, url, raw, t0)
                                               for url in urls))
            revoke_s.append(max(sent for sent, _ in times))
            answered_s.append(max(answered for _, answered in times))
            if revoke_s[-1] == float("inf"):
                revoke_failures.append(key.name)

    async def run() -> dict:
        async with client_from("127.0.0.2") as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for n in range(int(rate * duration_s)):
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
                tasks.append(asyncio.create_task(one(client, n)))
            created_in = loop.time() - start
            await asyncio.gather(*tasks)
        served = sum(1 for s in first_statuses if s == [200] * len(urls))
        finite = sorted(t for t in revoke_s if t != float("inf"))
        return {"created": len(first_statuses), "created_in_s": round(created_in, 2),
                "rate_achieved": round(len(first_statuses) / created_in, 1) if created_in else 0,
                "first_request_served_by_every_replica": served,
                "first_request_statuses": sorted({str(s) for s in map(tuple, first_statuses)}),
                "revocations": len(revoke_s),
                # The first refused request's sending (both replicas: the later one).
                "revoke_to_refused_s": {
                    "max": round(max(revoke_s), 3) if revoke_s else None,
                    "p50": round(finite[len(finite) // 2], 3) if finite else None,
                    "all": [round(t, 3) for t in revoke_s]},
                # Its 401's arrival: an upper bound that includes the request's latency.
                "revoke_to_401_answered_s": {
                    "max": round(max(answered_s), 3) if answered_s else None,
                    "all": [round(t, 3) for t in answered_s]},
                "revocations_never_refused": revoke_failures,
                "requests_per_replica": [sent_to[url] for url in urls]}

    print(json.dumps(asyncio.run(run())))


# --- the scenario ------------------------------------------------------------------------------

def _child(args: list[str], env: dict[str, str], timeout: float) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=harness.ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"bench.scale {args[0]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load(urls: list[str], keys: list[str], body: bytes, connections: int, duration_s: float,
          tmp: Path, delay_ms: int = 0) -> list[dict]:
    """One wrk per replica, `connections` split between them, all at once (`delay_ms`: each
    connection waits that long before each request)."""
    import concurrent.futures

    per = max(1, connections // len(urls))
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        runs = [pool.submit(harness.wrk, harness.Target(url, "/v1/chat/completions",
                                                        {"authorization": f"Bearer {key}"}),
                            body=body, concurrency=per, duration_s=duration_s,
                            delay_ms=delay_ms, workdir=tmp)
                for url, key in zip(urls, keys)]
        return [r.result() for r in runs]


def _phase(name: str, load: list[dict], pids: list[int], cpu: dict,
           extra_requests: list[int] | None = None) -> dict:
    """A phase's figures; CPU ms per request counts every request a replica served (the
    load's and the churn's)."""
    memory = [harness.memory_mb(pid) for pid in pids]
    extra = extra_requests or [0] * len(pids)
    cpu_ms = [round(10 * cpu[f"replica{n}_cpu_pct"] * cpu["elapsed_s"]
                    / max(1, w["completed"] + extra[n]), 2) for n, w in enumerate(load)]
    return {"phase": name, "cpu_ms_per_request": cpu_ms,
            "replica_cpu_pct": [cpu[f"replica{n}_cpu_pct"] for n in range(len(pids))],
            "machine_busy_pct": cpu["machine_busy_pct"],
            "p50_ms": [w["latency_ms"]["p50"] for w in load],
            "p99_ms": [w["latency_ms"]["p99"] for w in load],
            "rps": [w["rps"] for w in load], "non2xx": [w["non2xx"] for w in load],
            "socket_errors": [w["socket_errors"] for w in load],
            "rss_mb": [m["rss_mb"] for m in memory], "peak_rss_mb": [m["hwm_mb"] for m in memory]}


def run(*, base_env: dict[str, str], upstream_port: int, routing_yaml: str, body: bytes,
        tmp: Path) -> dict:
    """The scenario against the fake upstream on `upstream_port`; its figures and targets."""
    from gateway.tests.redis_server import RedisServer
    from tests.faults.harness import DATABASE, MariaDB

    keys = _env_int("BENCH_SCALE_KEYS", 1_000_000)
    duration_s = float(os.environ.get("BENCH_SCALE_S") or 20)
    rate = float(os.environ.get("BENCH_SCALE_CHURN_RATE") or 20)
    connections = _env_int("BENCH_SCALE_CONNECTIONS", 16)
    pace_ms = _env_int("BENCH_SCALE_PACE_MS", 100)
    result: dict = {"keys": keys, "duration_s": duration_s, "churn_rate": rate,
                    "connections": connections, "replicas": 2, "pace_ms": pace_ms}
    print(f"\n== scale: {keys:,} keys, 2 replicas, {connections} connections, "
          f"{rate:g} key creations/s", flush=True)
    database, redis_server, replicas = MariaDB(), RedisServer(), []
    try:
        database.install()
        database.start()
        database.query(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 "
                       "COLLATE utf8mb4_unicode_ci", database=None)
        redis_server.start()
        env = {**base_env, "DATABASE_URL": database.url, "REDIS_URL": redis_server.url,
               "CELERY_BROKER_URL": redis_server.url}
        harness.manage(["migrate", "--noinput"], env)
        config = tmp / "routing-scale.yaml"
        config.write_text(routing_yaml)
        harness.manage(["gateway_apply", str(config)], env)
        load_keys = tmp / "scale-load-keys.txt"
        result["insert"] = _child(["insert", str(keys), str(load_keys)], env, timeout=3600)
        print(f"  inserted {result['insert']['inserted']:,} keys in "
              f"{result['insert']['seconds']} s", flush=True)
        # The insert leaves the key table's pages dirty: written back first, so that their
        # write-back does not weigh on the first phase only (a run without this wait had a
        # p99 above a second in that phase).
        admin = database.connect()
        try:
            with admin.cursor() as cursor:
                result["insert"]["settle_s"] = harness.innodb_settle(cursor, 300)
        finally:
            admin.close()
        print(f"  InnoDB wrote back the insert's dirty pages in "
              f"{result['insert']['settle_s']} s", flush=True)
        raws = load_keys.read_text().split()
        urls = []
        for n in range(2):
            port = harness.free_port()
            replicas.append(harness.start_server(f"replica {n}", port, env,
                                                 tmp / f"scale-replica-{n}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        pids = [r.pid for r in replicas]
        result["idle_rss_mb"] = [harness.memory_mb(pid)["rss_mb"] for pid in pids]
        for url, raw in zip(urls, raws):  # warm: each replica has read its load key
            harness.client(harness.Target(url, "/v1/chat/completions",
                                          {"authorization": f"Bearer {raw}"}),
                           body=body, concurrency=4, mode="openai-sse", count=200)
        for suffix, delay_ms in (("", 0), ("_paced", pace_ms)):
            if suffix and not pace_ms:
                continue
            label = f", paced ({delay_ms} ms between requests)" if delay_ms else ""
            for pid in pids:
                harness.reset_peak(pid)
            meter = harness.CpuMeter({f"replica{n}": pid for n, pid in enumerate(pids)}).start()
            quiet = _load(urls, raws, body, connections, duration_s, tmp, delay_ms)
            result[f"without_churn{suffix}"] = _phase(f"without churn{label}", quiet, pids,
                                                      meter.stop())
            print(f"  without churn{label}: p99 {result[f'without_churn{suffix}']['p99_ms']} ms, "
                  f"RSS {result[f'without_churn{suffix}']['rss_mb']} MB", flush=True)
            for pid in pids:
                harness.reset_peak(pid)
            meter = harness.CpuMeter({f"replica{n}": pid for n, pid in enumerate(pids)}).start()
            churn = subprocess.Popen(
                [sys.executable, "-m", "bench.scale", "churn", json.dumps(urls), str(rate),
                 str(duration_s)], cwd=harness.ROOT, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            busy = _load(urls, raws, body, connections, duration_s, tmp, delay_ms)
            cpu = meter.stop()
            out, err = churn.communicate(timeout=duration_s + 120)
            if churn.returncode != 0:
                raise RuntimeError(f"bench.scale churn failed: {err[-3000:]}")
            result[f"churn{suffix}"] = json.loads(out.strip().splitlines()[-1])
            result[f"with_churn{suffix}"] = _phase(
                f"with churn{label}", busy, pids, cpu,
                result[f"churn{suffix}"]["requests_per_replica"])
            print(f"  with churn{label}:    p99 {result[f'with_churn{suffix}']['p99_ms']} ms, "
                  f"RSS {result[f'with_churn{suffix}']['rss_mb']} MB; churn "
                  f"{result[f'churn{suffix}']}", flush=True)
        result["key_changes"] = database.query("SELECT COUNT(*) FROM providers_keychange")[0][0]
    finally:
        for replica in replicas:
            replica.stop()
        redis_server.stop()
        database.destroy()
    result["targets"] = targets(result)
    return result


def _suffixes(result: dict) -> list[str]:
    """The pairs of phases the run has: as fast as the replicas answer, then paced."""
    return ["", *(["_paced"] if "with_churn_paced" in result else [])]


def targets(result: dict) -> dict:
    """The issue's targets, for each pair of phases (`_paced`: the paced pair's)."""
    out: dict = {}
    rss, churns = 0.0, []
    for suffix in _suffixes(result):
        quiet, busy = result[f"without_churn{suffix}"], result[f"with_churn{suffix}"]
        ratios = [round(b / q, 3) if q else None for q, b in zip(quiet["p99_ms"], busy["p99_ms"])]
        out[f"p99_with_churn_over_without{suffix}"] = ratios
        out[f"p99_within_10pct{suffix}"] = all(r is not None and r <= TARGET_P99_RATIO
                                               for r in ratios)
        rss = max(rss, *quiet["peak_rss_mb"], *busy["peak_rss_mb"], *quiet["rss_mb"],
                  *busy["rss_mb"])
        churns.append(result[f"churn{suffix}"])
    revoke_max = max((c["revoke_to_refused_s"]["max"] for c in churns
                      if c["revoke_to_refused_s"]["max"] is not None), default=None)
    return {
        **out, "max_rss_mb": rss, "rss_within_150mb": rss <= TARGET_RSS_MB,
        "new_keys_served_first_request_everywhere": all(
            c["first_request_served_by_every_replica"] == c["created"] > 0 for c in churns),
        "revoked_refused_within_1s": (revoke_max is not None and revoke_max < TARGET_REVOKE_S
                                      and not any(c["revocations_never_refused"]
                                                  for c in churns)),
    }


def markdown(result: dict) -> str:
    t = result["targets"]
    lines = [
        f"### scale: {result['keys']:,} keys, 2 replicas, {result['connections']} connections "
        f"(streamed, {result['duration_s']:g} s per phase)", "",
        "| phase | p50 ms (replica 1 / 2) | p99 ms | req/s | CPU ms/req | RSS MB | peak RSS MB "
        "| non-2xx | machine busy % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for suffix in _suffixes(result):
        for phase in (result[f"without_churn{suffix}"], result[f"with_churn{suffix}"]):
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                phase["phase"], *(" / ".join(str(v) for v in phase[k])
                                  for k in ("p50_ms", "p99_ms", "rps", "cpu_ms_per_request",
                                            "rss_mb", "peak_rss_mb", "non2xx")),
                phase["machine_busy_pct"]))
    lines += ["", f"- bulk insert: {result['insert']['inserted']:,} keys in "
                  f"{result['insert']['seconds']} s"]
    for suffix in _suffixes(result):
        churn = result[f"churn{suffix}"]
        lines.append(
            f"- churn{' (paced phases)' if suffix else ''}: {churn['created']} keys created "
            f"({churn['rate_achieved']}/s), {churn['first_request_served_by_every_replica']} "
            f"served on their first request by both replicas; {churn['revocations']} revoked: "
            f"the first refused request was sent {churn['revoke_to_refused_s']['p50']} s "
            f"(median), {churn['revoke_to_refused_s']['max']} s (max) after the revocation, "
            f"its 401 answered by {churn['revoke_to_401_answered_s']['max']} s (max)")
    ratios = "; ".join(f"{'paced ' if suffix else ''}{t[f'p99_with_churn_over_without{suffix}']} "
                       f"(<= 1.10: {t[f'p99_within_10pct{suffix}']})"
                       for suffix in _suffixes(result))
    lines.append(
        f"- targets: p99 ratio {ratios}, RSS {t['max_rss_mb']} MB (<= 150: "
        f"{t['rss_within_150mb']}), first requests "
        f"{t['new_keys_served_first_request_everywhere']}, revocation < 1 s "
        f"{t['revoked_refused_within_1s']}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "insert":
        _insert(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "churn":
        _churn(json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
        return 0
    # Alone: the fake upstream and the bench's production settings, as `make bench` runs it.
    import tempfile

    from bench.run import Knobs, openai_body, routing_yaml, settings_env

    reason = available()
    if reason:
        print(f"skipping scale: {reason}", file=sys.stderr)
        return 1
    harness.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="gateway-scale-") as tmpdir:
        tmp = Path(tmpdir)
        port = harness.free_port()
        upstream = harness.start_upstream(port, tmp / "upstream.log")
        try:
            result = run(base_env=settings_env(Knobs()), upstream_port=port,
                         routing_yaml=routing_yaml(port),
                         body=openai_body("bench-c20", stream=True), tmp=tmp)
        finally:
            upstream.stop()
    print("\n" + markdown(result))
    out = Path(os.environ.get("BENCH_RESULTS_DIR") or harness.BENCH / "results")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"scale-{stamp}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {out / f'scale-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
