"""Two replicas under load while Redis is frozen (SIGSTOP for 5 s, then SIGCONT), or killed and
started again empty 5 s later: a budgeted key never spends past its budget, and an RPM limit
admits at most 1.1 x what it allows."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from decimal import Decimal

import httpx
import pytest

from tests.faults.harness import PROVIDER, create_api_key, wait_until
from tests.faults.traffic import burst, chat_body, ledger_rows
from usage.ratelimits import STARTUP_HEARTBEAT_S

BUDGET = Decimal("0.30")   # a request costs $0.018 (conftest): 16 fit
RPM = 30
BEFORE_S, PAUSE_S, AFTER_S = 2.0, 5.0, 5.0
logging.getLogger("httpx").setLevel(logging.WARNING)  # hundreds of requests


async def _load(urls: list[str], key: str, *, seconds: float, workers: int,
                gap_s: float) -> list[tuple[float, int, str]]:
    """`workers` clients, each sending one request after another (to the replicas in turn,
    `gap_s` apart) for `seconds`: (time sent, status, request id) of each."""
    answers: list[tuple[float, int, str]] = []
    started = time.monotonic()

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = n
        while time.monotonic() - started < seconds:
            sent = time.monotonic() - started
            response = await client.post(f"{urls[i % len(urls)]}/v1/chat/completions",
                                         json=chat_body(),
                                         headers={"authorization": f"Bearer {key}"})
            answers.append((sent, response.status_code, response.headers.get("x-request-id", "")))
            i += 1
            await asyncio.sleep(gap_s)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*[worker(client, n) for n in range(workers)])
    return answers


@pytest.mark.parametrize(("faults_redis", "fault"), [(True, "pause"), (False, "restart-empty")],
                         indirect=["faults_redis"], ids=["pause", "restart-empty"])
def test_a_redis_outage_under_load_overshoots_no_budget_and_no_rate_limit(
        replicas, faults_db, faults_redis, fake_upstream, key_name, fault):
    budgeted = create_api_key(f"{key_name}-budget", "--budget-usd", str(BUDGET),
                              "--budget-period", "day", env=replicas.env)
    limited = create_api_key(f"{key_name}-rpm", "--rpm", str(RPM), env=replicas.env)
    roomy = create_api_key(f"{key_name}-warm", "--rpm", "100000", env=replicas.env)
    urls = replicas.start(2)
    # A replica counts the live replicas (its share of a limit while Redis is away) when it
    # checks a limit; a young one recounts every STARTUP_HEARTBEAT_S, so a second round just
    # after that sees both. (Counting only every HEARTBEAT_S, a replica that checked first
    # counted itself alone for 5 s, and an outage then let it admit the whole limit: 43
    # admitted where 36 were allowed.)
    assert [a.status for a in burst(urls, roomy, 2, stream_every=0)] == [200, 200]
    time.sleep(STARTUP_HEARTBEAT_S + 0.1)
    assert [a.status for a in burst(urls, roomy, 2, stream_every=0)] == [200, 200]
    fake_upstream.behave(PROVIDER, latency_s=0.3)
    seconds = BEFORE_S + PAUSE_S + AFTER_S
    results: dict[str, list] = {}

    def run(name: str, key: str, workers: int, gap_s: float) -> None:
        results[name] = asyncio.run(_load(urls, key, seconds=seconds, workers=workers,
                                          gap_s=gap_s))

    threads = [threading.Thread(target=run, args=("budget", budgeted, 2, 0.8)),
               threading.Thread(target=run, args=("rpm", limited, 4, 0.1))]
    for thread in threads:
        thread.start()
    time.sleep(BEFORE_S)
    if fault == "pause":
        faults_redis.pause()
        time.sleep(PAUSE_S)
        faults_redis.resume()
    else:  # no persistence: it comes back with no budget copy, bucket or epoch
        faults_redis.kill()
        time.sleep(PAUSE_S)
        faults_redis.start()
    for thread in threads:
        thread.join(seconds + 60)

    budget_answers, rpm_answers = results["budget"], results["rpm"]
    budget_rows = wait_until(
        lambda: (r := ledger_rows(faults_db, f"{key_name}-budget")) and
        len(r) >= len(budget_answers) and r, timeout=15, what="a row per budgeted request")
    spent = sum((cost for _, _, cost in budget_rows), Decimal(0))
    admitted = sum(1 for _, status, _ in rpm_answers if status == 200)
    # GCRA: a burst of RPM, then RPM per minute; the window is from the first request to the
    # last one sent.
    window_s = max(sent for sent, _, _ in rpm_answers)
    allowed = RPM + RPM * window_s / 60
    seen = (f"budget {BUDGET}: spent {spent}, statuses {_timeline(budget_answers)}; rpm {RPM}: "
            f"{admitted} admitted, {allowed:.1f} allowed over {window_s:.1f} s, statuses "
            f"{_timeline(rpm_answers)}")
    print(f"\nredis {fault}: {seen}")
    assert {status for _, status, _ in budget_answers + rpm_answers} <= {200, 429}, seen
    assert sorted(request_id for request_id, _, _ in budget_rows) == \
        sorted(request_id for _, _, request_id in budget_answers)
    assert spent <= BUDGET, seen
    assert admitted <= 1.1 * allowed, seen
    # The load reached the budget (a 429 for a key without rate limits is budget_exceeded).
    assert any(status == 429 for _, status, _ in budget_answers), seen


def _timeline(answers: list[tuple[float, int, str]]) -> dict[str, dict[int, int]]:
    """Statuses counted before, during and after the outage."""
    phases: dict[str, dict[int, int]] = {"before": {}, "paused": {}, "after": {}}
    for sent, status, _ in answers:
        phase = "before" if sent < BEFORE_S else "paused" if sent < BEFORE_S + PAUSE_S else "after"
        phases[phase][status] = phases[phase].get(status, 0) + 1
    return phases
