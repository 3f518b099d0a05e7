"""A key created while the gateway runs works on its first request, without any snapshot reload;
only keys the database confirms unknown count towards the per-address lockout; a revoked key
stops within the poll interval through the key change feed (no Redis here)."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from providers.cache import KeyCache, key_cache, snapshot_cache
from providers.keys import api_key_hash
from providers.models import ApiKey
from providers.services import api_key_create, api_key_revoke

CHAT = {"model": "mock-test", "messages": [{"role": "user", "content": "hi"}]}


def _chat(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=20,
                      headers={"authorization": f"Bearer {key}"}).status_code


def _burst(url: str, key: str, count: int) -> list[str]:
    """`count` concurrent completions through the openai SDK; each one's outcome."""
    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(**CHAT)
        except openai.APIStatusError as exc:
            return str(exc.status_code)
        return "ok"

    async def burst() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
            return await asyncio.gather(*(one(client) for _ in range(count)))

    return asyncio.run(burst())


@pytest.fixture
def long_poll(gateway_url, mock_provider, api_key, settings) -> str:
    """A live gateway whose snapshot is loaded and whose config is not polled during the test
    (an hour's poll interval), so only the lookup by digest can serve a new key."""
    assert _chat(gateway_url, api_key) == 200
    settings.GATEWAY_CONFIG_POLL_S = 3600
    return gateway_url


def test_a_key_created_while_the_gateway_runs_serves_its_first_burst(long_poll, ledger_rows):
    snapshot, loads, lookups = snapshot_cache._snapshot, snapshot_cache.loads, key_cache.lookups
    key, raw = api_key_create(name="fresh", models=["mock-test"])
    assert _burst(long_poll, raw, 20) == ["ok"] * 20
    rows = [row for row in ledger_rows(21) if row.api_key_id == key.id]
    assert len(rows) == 20 and {row.status for row in rows} == {"ok"}
    # Served without reloading the routing snapshot, by one lookup for the 20 requests.
    assert snapshot_cache._snapshot is snapshot and snapshot_cache.loads == loads
    assert key_cache.lookups == lookups + 1


def test_a_key_created_through_the_command_works_on_its_first_request(long_poll):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_api_key", "from-command", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert _chat(long_poll, raw) == 200


def test_only_confirmed_unknown_keys_count_towards_the_lockout(long_poll):
    started = time.monotonic()
    guesses = [_chat(long_poll, f"gw-guess-{i:04d}") for i in range(25)]
    assert set(guesses) == {401}
    _, raw = api_key_create(name="fresh")
    assert _burst(long_poll, raw, 20) == ["ok"] * 20
    guesses += [_chat(long_poll, f"gw-guess-{i:04d}") for i in range(25, 40)]
    elapsed = time.monotonic() - started
    # 30 failures a minute, refilling one per 2 s of the run (a busy machine runs longer): the
    # 20 fresh requests did not count (had they, the first refusal would come by the 11th).
    first_refusal = guesses.index(429)
    assert 30 <= first_refusal <= 31 + int(elapsed / 2) and set(guesses[first_refusal:]) == {429}
    assert set(guesses[:first_refusal]) == {401}


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "looked-up-after"])
def test_a_revoked_key_stops_within_the_poll_interval(gateway_url, mock_provider, api_key,
                                                      settings, cached):
    poll = 1.0
    assert _chat(gateway_url, api_key) == 200
    settings.GATEWAY_CONFIG_POLL_S = poll
    key, raw = api_key_create(name="soon-revoked")
    if cached:
        assert _chat(gateway_url, raw) == 200
    snapshot = snapshot_cache._snapshot
    api_key_revoke(key=ApiKey.objects.get(pk=key.pk), actor="tests")
    revoked_at = time.monotonic()
    while _chat(gateway_url, raw) == 200:
        assert time.monotonic() - revoked_at < poll + 0.5, "the revoked key is still served"
        time.sleep(0.05)
    # Once refused, it never comes back; the routing snapshot was never reloaded.
    assert {_chat(gateway_url, raw) for _ in range(10)} == {401}
    time.sleep(poll)
    assert _chat(gateway_url, raw) == 401
    assert snapshot_cache._snapshot is snapshot


def test_concurrent_lookups_of_one_digest_are_one_query_and_unknowns_are_remembered(
        transactional_db, monkeypatch):
    from providers import cache

    monkeypatch.setattr(cache, "UNKNOWN_TTL_S", 1.0)
    keys = KeyCache()
    _, raw = api_key_create(name="looked-up")

    async def scenario() -> None:
        unknown = await asyncio.gather(*(keys.find("0" * 64) for _ in range(20)))
        assert unknown == [None] * 20 and keys.lookups == 1
        assert await keys.find("0" * 64) is None and keys.lookups == 1
        await asyncio.sleep(1.05)
        assert await keys.find("0" * 64) is None and keys.lookups == 2

        found = await asyncio.gather(*(keys.find(api_key_hash(raw)) for _ in range(20)))
        assert {k.name for k in found} == {"looked-up"} and keys.lookups == 3
        assert (await keys.find(api_key_hash(raw))).name == "looked-up"
        assert keys.lookups == 3

    asyncio.run(scenario())
