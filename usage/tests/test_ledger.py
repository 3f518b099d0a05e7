"""The ledger: one row per proxied request, whatever happens to it."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.tests.provider_settings import provider_translation_set
from gateway.tokens import text_tokens
from usage.models import UsageRecord


async def _cancel_streams(url: str, key: str, n: int) -> int:
    """Open n streams and hang up each right after its first content chunk."""
    cancelled = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal cancelled
        async with client.stream("POST", f"{url}/v1/chat/completions",
                                 headers={"authorization": f"Bearer {key}"},
                                 json={"model": "gpt-test", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]}) as response:
            async for line in response.aiter_lines():
                if '"content":"one"' in line:
                    cancelled += 1
                    return

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=50)) as client:
        await asyncio.gather(*[one(client) for _ in range(n)])
    return cancelled


@pytest.mark.parametrize("drain", [False, True])
def test_cancelled_streams_each_get_a_row_with_the_tokens_produced(gateway_url, fake_provider,
                                                                   api_key, drain):
    if drain:
        provider_translation_set("fake-a", drain_on_disconnect=True)
    # The rest of each stream lasts ~2 s after the client hangs up on "one".
    reply = "one " + "word " * 40
    fake_provider.behave("fake-a", reply=reply, chunk_delay_s=0.05)
    assert asyncio.run(_cancel_streams(gateway_url, api_key, 200)) == 200
    deadline = time.monotonic() + 30
    while UsageRecord.objects.count() < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 200
    assert {r.status for r in rows} == {"client_disconnected"}
    if drain:
        # Drained to the end: the upstream's reported usage, not a guess from the first chunk.
        assert {(r.input_tokens, r.output_tokens, r.usage_source) for r in rows} == \
            {(11, 7, "reported")}
    else:
        # Closed at once: what each had streamed ("one", and the words relayed before the
        # gateway saw its client go), counted, out of a reply of 41 words.
        assert {r.usage_source for r in rows} == {"estimated"}
        assert all(text_tokens("one") <= r.output_tokens < text_tokens(reply) // 2 for r in rows)
        assert fake_provider.wait_for_hangups(200) == 200
    assert len({r.request_id for r in rows}) == 200


def test_client_leaving_before_the_upstream_answers_gets_one_row(gateway_url, fake_provider, api_key):
    fake_provider.behave("fake-a", latency_s=1.5)
    for stream in (False, True):
        try:
            httpx.post(f"{gateway_url}/v1/chat/completions", timeout=0.4,
                       headers={"authorization": f"Bearer {api_key}"},
                       json={"model": "gpt-test", "stream": stream,
                             "messages": [{"role": "user", "content": "hi"}]})
        except httpx.ReadTimeout:
            pass
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 2 and {r.status for r in rows} == {"client_disconnected"}
    # Once the upstream has answered both, neither holds its in-flight slot any more.
    assert fake_provider.wait_for_answers(2) == 2
    deadline = time.monotonic() + 5
    while (in_flight := _in_flight(gateway_url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight == 0


def _in_flight(url: str) -> int:
    routes = httpx.get(f"{url}/health/detailed").json()["providers"]["fake-a"]["routes"]
    return routes[0]["in_flight"]
