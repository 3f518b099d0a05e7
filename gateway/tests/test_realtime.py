"""/v1/realtime end to end: the `openai` SDK's realtime client against the live gateway
(uvicorn serving the real ASGI app), a fake realtime upstream on loopback
(gateway/tests/fake_realtime.py), and the ledger rows that come out."""
from __future__ import annotations

import asyncio
import base64
from decimal import Decimal

import openai
import orjson
import pytest
import websockets

from gateway.tests.fake_realtime import AUDIO_CHUNKS, USAGE, FakeRealtime, wait_for
from usage.pricing import cost_usd

pytestmark = pytest.mark.django_db(transaction=True)

BOUND_S = 5.0


@pytest.fixture(scope="session")
def _fake_realtime_server() -> FakeRealtime:
    fake = FakeRealtime()
    fake.start()
    return fake


@pytest.fixture
def fake_realtime(_fake_realtime_server: FakeRealtime) -> FakeRealtime:
    _fake_realtime_server.reset()
    yield _fake_realtime_server
    _fake_realtime_server.reset()


@pytest.fixture
def realtime_provider(fake_realtime: FakeRealtime, transactional_db) -> FakeRealtime:
    """Provider `rt-a` (kind openai) on the fake realtime upstream: public `gpt-rt` as
    upstream `up-rt`, priced 4 / 16 / 0.40 USD per million text tokens, 32 / 64 for audio."""
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: rt-a
    kind: openai
    base_url: {fake_realtime.base_url("rt-a")}
    api_key: sk-fake-realtime-upstream
    models:
      gpt-rt: up-rt
prices:
  - model: up-rt
    input: "4.00"
    output: "16.00"
    cached_input: "0.40"
    audio_input: "32.00"
    audio_output: "64.00"
"""))
    return fake_realtime


def _client(gateway_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gateway_url}/v1", max_retries=0)


async def _until(connection, kind: str) -> list:
    """The events received up to and including the first of type `kind` (bounded)."""
    events = []
    async with asyncio.timeout(BOUND_S):
        while True:
            event = await connection.recv()
            events.append(event)
            if event.type == kind:
                return events


def _rows(ledger_rows, count: int) -> dict[str, list]:
    rows = ledger_rows(count)
    assert len(rows) == count, [(r.surface, r.status) for r in rows]
    by_surface: dict[str, list] = {}
    for row in rows:
        by_surface.setdefault(row.surface, []).append(row)
    return by_surface


def _price():
    from providers.models import Price

    return Price.objects.get(upstream_model="up-rt")


def _expected_cost(usage: dict) -> Decimal:
    from providers.selectors import price_info

    inp, out = usage["input_token_details"], usage["output_token_details"]
    cached_audio = inp.get("cached_tokens_details", {}).get("audio_tokens", 0)
    return cost_usd(price=price_info(_price()), input_tokens=usage["input_tokens"],
                    output_tokens=usage["output_tokens"], cached_tokens=inp["cached_tokens"],
                    audio_input_tokens=inp["audio_tokens"] - cached_audio,
                    audio_output_tokens=out["audio_tokens"])


def test_text_session_relays_both_ways_and_bills_each_response(gateway_url, realtime_provider,
                                                               make_key, ledger_rows):
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            created = await _until(conn, "session.created")
            assert created[-1].session.model == "up-rt"
            update = '{"type":"session.update","session":{"type":"realtime","instructions":"be brief"}}'
            await conn.send_raw(update)
            await _until(conn, "session.updated")
            item = ('{"type":"conversation.item.create","item":{"type":"message","role":"user",'
                    '"content":[{"type":"input_text","text":"Say hello"}]}}')
            await conn.send_raw(item)
            await _until(conn, "conversation.item.created")
            texts = []
            for _ in range(2):
                await conn.send({"type": "response.create",
                                 "response": {"instructions": "scenario:text"}})
                events = await _until(conn, "response.done")
                texts.append("".join(e.delta for e in events
                                     if e.type == "response.output_text.delta"))
                assert events[-1].response.usage.input_token_details.cached_tokens == 64
            return update, item, texts

    update, item, texts = asyncio.run(session())
    assert texts == ["Hello world", "Hello world"]
    fake = realtime_provider
    assert fake.received[:2] == [update, item]  # the client's frames, byte for byte
    assert fake.received_types() == ["session.update", "conversation.item.create",
                                     "response.create", "response.create"]
    handshake = fake.handshakes[0]
    assert handshake["query"] == {"model": "up-rt"}
    assert handshake["headers"]["Authorization"] == "Bearer sk-fake-realtime-upstream"
    assert fake.wait_closed()

    rows = _rows(ledger_rows, 3)
    usage = USAGE["text"]
    for row in rows["realtime"]:
        assert (row.status, row.usage_source, row.public_model, row.upstream_model) == \
            ("ok", "reported", "gpt-rt", "up-rt")
        assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (120, 40, 64)
        assert (row.audio_input_tokens, row.audio_output_tokens) == (0, 0)
        assert row.cost_usd == _expected_cost(usage)
        assert row.provider_name == "rt-a" and row.stream
    [session_row] = rows["realtime.session"]
    assert (session_row.status, session_row.http_status, session_row.input_tokens,
            session_row.output_tokens, session_row.cost_usd) == ("ok", 101, 0, 0, 0)
    assert session_row.latency_ms >= 0 and session_row.provider_name == "rt-a"


def test_function_call_arguments_reach_the_client(gateway_url, realtime_provider, make_key,
                                                  ledger_rows):
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create",
                             "response": {"instructions": "scenario:function"}})
            return await _until(conn, "response.done")

    events = asyncio.run(session())
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert (done.name, done.call_id, done.arguments) == ("get_weather", "call_1",
                                                         '{"city":"Paris"}')
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.status, row.input_tokens, row.output_tokens) == ("ok", 200, 30)
    assert row.cost_usd == _expected_cost(USAGE["function"])


def test_audio_deltas_pass_through_byte_identical_and_bill_audio_tokens(
        gateway_url, realtime_provider, make_key, ledger_rows):
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create",
                             "response": {"instructions": "scenario:audio"}})
            frames = []
            async with asyncio.timeout(BOUND_S):
                while True:
                    frame = await conn.recv_bytes()
                    frames.append(frame)
                    if orjson.loads(frame)["type"] == "response.done":
                        return frames

    frames = asyncio.run(session())
    fake = realtime_provider
    sent_audio = [f for f in fake.sent if '"response.output_audio.delta"' in f]
    got_audio = [f.decode() for f in frames if b'"response.output_audio.delta"' in f]
    assert len(sent_audio) == AUDIO_CHUNKS and got_audio == sent_audio
    for frame in got_audio:
        assert len(base64.b64decode(orjson.loads(frame)["delta"])) == 4800
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (700, 300, 128)
    # 500 audio input tokens, of which 28 were cache reads (billed at the cached rate)
    assert (row.audio_input_tokens, row.audio_output_tokens) == (472, 250)
    assert row.cost_usd == _expected_cost(USAGE["audio"])
