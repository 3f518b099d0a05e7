"""DeepSeek-style cache hits (`usage.prompt_cache_hit_tokens`) billed at the cached rate on the
paths the JSON-event streams take: a task (JSON and `?stream=1`) and the chat page, each
answered by an OpenAI-compatible upstream. Prices (conftest `fake_provider`): 1.00 input,
0.50 cached input, 2.00 output, USD per million; 11 prompt tokens, 5 of them cache hits, 7
output: 6 x 1.00 + 5 x 0.50 + 7 x 2.00."""
from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from chat.tests.conftest import sse_events
from usage.models import UsageRecord

CACHED = 5
COST = Decimal("0.0000225000")


@pytest.fixture
def deepseek(fake_provider):
    fake_provider.behave("fake-a", usage_shape="deepseek", cached_tokens=CACHED)
    return fake_provider


def _row(ledger_rows, *, surface: str) -> UsageRecord:
    [row] = ledger_rows(1)
    assert UsageRecord.objects.count() == 1
    assert (row.surface, row.status, row.usage_source) == (surface, "ok", "reported")
    assert (row.input_tokens, row.cached_tokens, row.output_tokens) == (11, CACHED, 7)
    assert row.cost_usd == COST
    return row


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_task_bills_deepseek_cache_hits_at_the_cached_rate(gateway_url, deepseek, api_key,
                                                              make_task, ledger_rows, stream):
    make_task("risk_check")
    response = httpx.post(f"{gateway_url}/api/tasks/risk_check" + ("?stream=1" if stream else ""),
                          json={"input": "hi"}, headers={"authorization": f"Bearer {api_key}"},
                          timeout=20)
    assert response.status_code == 200, response.text
    if stream:
        [usage] = [e for e in sse_events(response) if e["type"] == "usage"]
        cost = usage["cost_usd"]
    else:
        cost = response.json()["cost_usd"]
    assert Decimal(cost) == COST
    _row(ledger_rows, surface="task")


def test_the_chat_page_bills_deepseek_cache_hits_at_the_cached_rate(chat_client, deepseek,
                                                                     ledger_rows):
    session_id = chat_client.post("/chat/api/sessions", json={"model": "gpt-test"}).json()["id"]
    events = sse_events(chat_client.post(f"/chat/api/sessions/{session_id}/messages",
                                         json={"content": "hi", "model": "gpt-test"}))
    [usage] = [e for e in events if e["type"] == "usage"]
    assert Decimal(usage["cost_usd"]) == COST
    _row(ledger_rows, surface="chat")
