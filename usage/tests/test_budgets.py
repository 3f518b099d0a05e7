"""Hard budgets, rate limits and idempotency against a live gateway."""
from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.tokens import chat_input_tokens
from providers.models import ApiKey, Team
from usage.budgets import units_to_usd
from usage.models import BudgetCounter, BudgetReservation, UsageRecord

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 1000


def _worst_case() -> Decimal:
    # fake-a's price: 1.00 input / 2.00 output per million tokens (conftest.fake_provider)
    return (Decimal(chat_input_tokens(MESSAGES)) * 1 + MAX_TOKENS * 2) / Decimal(1_000_000)


async def _burst(url: str, key: str, n: int, upstream, gate, **extra) -> list[httpx.Response]:
    """n concurrent requests; the admitted ones are held at the upstream (`gate`) until every
    request has been decided: each has either arrived there or already been answered."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        tasks = [asyncio.create_task(client.post(
            f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
            json={"model": "gpt-test", "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra}))
            for _ in range(n)]
        deadline = time.monotonic() + 20
        while (sum(t.done() for t in tasks) + len(upstream.calls()) < n
               and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        gate.open()
        return await asyncio.gather(*tasks)


def _ledger_sum(key_id: int) -> Decimal:
    return sum((r.cost_usd for r in UsageRecord.objects.filter(api_key_id=key_id)), Decimal(0))


@pytest.mark.parametrize("stream", [False, True])
def test_concurrent_requests_never_overshoot_budget(gateway_url, fake_provider, make_key, stream):
    # No admitted request reaches its end (and settles) before all 50 are decided, so the
    # reservations alone decide: each holds the worst case (the prompt estimate at 1.00 plus
    # max_tokens at 2.00 per million; the gateway counts both as _worst_case does, and the
    # units are exact for these prices), and a budget of exactly 10 worst cases admits exactly
    # 10: the 11th finds room for 9.
    gate = fake_provider.gate()
    fake_provider.behave("fake-a", hold=gate)
    budget = _worst_case() * 10
    raw = make_key(budget_usd=budget, budget_period="day")
    key = ApiKey.objects.get(name="tests")

    responses = asyncio.run(_burst(gateway_url, raw, 50, fake_provider, gate, stream=stream))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (10, 40)
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) > 0 for r in refused)
    assert len(fake_provider.calls()) == len(ok)

    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    spent = units_to_usd(counter.spent_units)
    assert spent <= budget
    assert counter.reserved_units == 0 and not BudgetReservation.objects.exists()
    assert spent == _ledger_sum(key.id)
    assert UsageRecord.objects.filter(status="rejected").count() == len(refused)
    assert UsageRecord.objects.filter(status="ok").count() == len(ok)


def test_team_budget_is_shared_by_its_keys(gateway_url, fake_provider, make_key):
    first = make_key(name="a", team="research")
    second = make_key(name="b", team="research")
    Team.objects.filter(name="research").update(budget_usd=_worst_case() * 1, budget_period="month")
    from providers.services import config_version_bump
    from django.db import transaction
    with transaction.atomic():
        config_version_bump()
    body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {first}"}).status_code == 200
    # The first request settled at its (small) real cost; a second worst case no longer fits.
    refused = httpx.post(f"{gateway_url}/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {second}"})
    assert refused.status_code == 429 and "team" in refused.json()["error"]["message"]


def test_unpriced_model_is_refused_for_budgeted_keys(gateway_url, demo_key, fake_upstream, make_key):
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: free
    kind: openai
    base_url: {fake_upstream.base_url("free")}
    models:
      unpriced: some-model
"""))
    budgeted = make_key(budget_usd=5)
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=budgeted, max_retries=0).chat.completions.create(
            model="unpriced", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_priced"
    assert fake_upstream.calls() == []
    unbudgeted = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=demo_key, max_retries=0)
    assert unbudgeted.chat.completions.create(model="unpriced", messages=MESSAGES).choices


def test_rpm_limit_answers_429_with_retry_after(gateway_url, demo_key, make_key):
    raw = make_key(rpm=2)
    body = {"model": "demo", "messages": MESSAGES}
    headers = {"authorization": f"Bearer {raw}"}
    codes = [httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[2].json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(codes[2].headers["retry-after"]) <= 30


def test_rate_limited_request_holds_no_budget(gateway_url, fake_provider, make_key):
    # RPM and the budget are checked together; the refused request must give its reservation back.
    raw = make_key(rpm=1, budget_usd=_worst_case() * 3, budget_period="day")
    key = ApiKey.objects.get(name="tests")
    first, second = (httpx.post(f"{gateway_url}/v1/chat/completions", timeout=30,
                                headers={"authorization": f"Bearer {raw}"},
                                json={"model": "gpt-test", "messages": MESSAGES, "max_tokens": MAX_TOKENS})
                     for _ in range(2))
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.json()["error"]["type"] == "rate_limit_error"
    counter = BudgetCounter.objects.get(scope="key", scope_id=key.id)
    assert counter.reserved_units == 0 and not BudgetReservation.objects.exists()
    assert units_to_usd(counter.spent_units) == _ledger_sum(key.id)
    assert UsageRecord.objects.get(status="rejected").cost_usd == 0
    from django.conf import settings
    if settings.REDIS_URL:  # reserved in Redis: nothing may stay held there either
        import redis

        from usage.budgets_redis import budget_shard, counter_key
        from usage.budgets import BudgetLimit
        client = redis.Redis.from_url(settings.REDIS_URL)
        limit = BudgetLimit(scope="key", scope_id=key.id, limit_usd=Decimal(0), period="day")
        row = UsageRecord.objects.get(status="rejected")
        assert client.hlen(budget_shard([limit]).reservations) == 0
        assert int(client.hget(counter_key(limit, row.created_at), "r")) == 0
        client.close()


def test_tpm_limit_counts_real_tokens(gateway_url, demo_key, make_key):
    raw = make_key(tpm=60)
    headers = {"authorization": f"Bearer {raw}"}
    long = [{"role": "user", "content": "word " * 30}]
    first = httpx.post(f"{gateway_url}/v1/chat/completions", headers=headers,
                       json={"model": "demo", "messages": long})
    assert first.status_code == 200
    second = httpx.post(f"{gateway_url}/v1/chat/completions", headers=headers,
                        json={"model": "demo", "messages": MESSAGES})
    assert second.status_code == 429 and "TPM" in second.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_idempotency_key_replays_the_first_response_once_charged(gateway_url, fake_provider, api_key, stream):
    headers = {"authorization": f"Bearer {api_key}", "idempotency-key": "order-42"}
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": stream}
    first = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers)
    second = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert len(fake_provider.calls()) == 1
    assert UsageRecord.objects.count() == 1
    changed = httpx.post(f"{gateway_url}/v1/chat/completions", headers=headers,
                         json={**body, "messages": [{"role": "user", "content": "other"}]})
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"


def test_concurrent_duplicate_gets_409(gateway_url, fake_provider, api_key):
    gate = fake_provider.gate()
    fake_provider.behave("fake-a", hold=gate)  # the first request is in progress until opened
    headers = {"authorization": f"Bearer {api_key}", "idempotency-key": "dup-1"}
    body = {"model": "gpt-test", "messages": MESSAGES}

    async def both():
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers))
            assert len(await asyncio.to_thread(fake_provider.wait_for_calls, 1)) == 1
            second = await client.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers)
            gate.open()
            return await first, second

    first, second = asyncio.run(both())
    assert first.status_code == 200 and second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_in_progress"
    assert len(fake_provider.calls()) == 1


def test_failed_request_does_not_burn_the_idempotency_key(gateway_url, fake_provider, api_key):
    headers = {"authorization": f"Bearer {api_key}", "idempotency-key": "retry-me"}
    body = {"model": "gpt-test", "messages": MESSAGES}
    fake_provider.behave("fake-a", status=500)
    assert httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers).status_code == 502
    fake_provider.behave("fake-a")
    retried = httpx.post(f"{gateway_url}/v1/chat/completions", json=body, headers=headers)
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert json.loads(retried.content)["choices"][0]["message"]["content"]
