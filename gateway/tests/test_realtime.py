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
            update = ('{"type":"session.update","session":{"type":"realtime",'
                      '"instructions":"be brief"}}')
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


def _ws_url(gateway_url: str, model: str = "gpt-rt") -> str:
    return gateway_url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


def test_browser_subprotocol_key_is_accepted_and_answered_with_realtime(
        gateway_url, realtime_provider, make_key, ledger_rows):
    key = make_key()

    async def session():
        async with websockets.connect(
                _ws_url(gateway_url),
                subprotocols=["realtime", f"openai-insecure-api-key.{key}"]) as ws:
            first = orjson.loads(await asyncio.wait_for(ws.recv(), BOUND_S))
            return ws.subprotocol, first["type"]

    assert asyncio.run(session()) == ("realtime", "session.created")
    rows = _rows(ledger_rows, 1)
    assert rows["realtime.session"][0].status == "ok"


def test_refused_handshakes_answer_in_openais_shape(gateway_url, realtime_provider, make_key,
                                                    ledger_rows):
    key = make_key(models="other-model")

    async def status_of(url: str, headers: dict) -> tuple[int, dict]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        response = refused.value.response
        return response.status_code, orjson.loads(response.body)

    async def handshakes():
        return [
            await status_of(_ws_url(gateway_url), {"authorization": "Bearer gw-not-a-key"}),
            await status_of(_ws_url(gateway_url), {}),
            await status_of(_ws_url(gateway_url), {"authorization": f"Bearer {key}"}),
            await status_of(_ws_url(gateway_url, "nope"), {"authorization": f"Bearer {key}"}),
        ]

    (bad, bad_body), (missing, _), (forbidden, _), (unknown, _) = asyncio.run(handshakes())
    assert (bad, missing, forbidden, unknown) == (401, 401, 403, 404)
    assert bad_body["error"]["code"] == "invalid_api_key"
    assert realtime_provider.handshakes == []
    assert ledger_rows(0) == []


def test_failed_keys_on_the_socket_count_towards_the_address_lockout(gateway_url,
                                                                      realtime_provider):
    from gateway.asgi_guards import AUTH_FAILURES_PER_MINUTE

    async def statuses():
        codes = []
        for _ in range(AUTH_FAILURES_PER_MINUTE + 2):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(
                        _ws_url(gateway_url), additional_headers={"authorization": "Bearer x"}):
                    pass
            codes.append(refused.value.response.status_code)
        return codes

    codes = asyncio.run(statuses())
    assert codes[0] == 401 and codes[-1] == 429


def test_failover_before_the_socket_opens(gateway_url, realtime_provider, make_key, ledger_rows):
    from providers.config_file import config_parse
    from providers.services import config_apply

    fake = realtime_provider
    config_apply(spec=config_parse(f"""
providers:
  - name: rt-a
    kind: openai
    base_url: {fake.base_url("rt-a")}
    api_key: sk-fake-realtime-upstream
    models:
      gpt-rt: up-rt
  - name: rt-b
    kind: openai
    base_url: {fake.base_url("rt-b")}
    api_key: sk-fake-realtime-upstream-b
    priority: 1
    models:
      gpt-rt: up-rt
"""))
    fake.refuse["rt-a"] = 503
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create",
                             "response": {"instructions": "scenario:text"}})
            await _until(conn, "response.done")

    asyncio.run(session())
    assert [h["path"] for h in fake.handshakes] == ["/p/rt-a/v1/realtime", "/p/rt-b/v1/realtime"]
    rows = _rows(ledger_rows, 2)
    assert [r.provider_name for r in rows["realtime"]] == ["rt-b"]
    assert rows["realtime.session"][0].provider_name == "rt-b"


def test_client_leaving_mid_response_cancels_it_upstream_and_bills_what_was_reported(
        gateway_url, realtime_provider, make_key, ledger_rows):
    key = make_key()

    async def session():
        conn = await _client(gateway_url, key).realtime.connect(model="gpt-rt").enter()
        await _until(conn, "session.created")
        await conn.send({"type": "response.create", "response": {"instructions": "scenario:hang"}})
        await _until(conn, "response.output_text.delta")
        await conn.close()

    asyncio.run(session())
    fake = realtime_provider
    assert fake.wait_closed(), "the upstream socket was not closed"
    assert fake.received_types()[-1] == "response.cancel"
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.status, row.usage_source, row.input_tokens, row.output_tokens) == \
        ("client_disconnected", "reported", 50, 8)
    assert row.cost_usd == _expected_cost(USAGE["cancelled"])
    assert rows["realtime.session"][0].status == "ok"


def test_upstream_leaving_closes_the_client_and_bills_the_response_in_flight(
        gateway_url, realtime_provider, make_key, ledger_rows):
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create",
                             "response": {"instructions": "scenario:drop"}})
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await _until(conn, "response.done")
            return closed.value.rcvd.code

    assert asyncio.run(session()) == 1011
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.status, row.usage_source, row.error_type) == \
        ("upstream_error", "estimated", "upstream_closed")
    [session_row] = rows["realtime.session"]
    assert (session_row.status, session_row.error_type) == ("upstream_error", "upstream_closed")


def test_budget_refusal_mid_session_answers_an_error_event_and_keeps_the_session(
        gateway_url, realtime_provider, make_key, ledger_rows):
    # The first response fits (its worst case: 20 output tokens at 16 USD/M, a text response);
    # what it reports (120 in, 40 out: 0.00089 USD) spends the budget, so the second is refused.
    key = make_key(budget_usd="0.0005")
    create = {"type": "response.create", "event_id": "evt_second",
              "response": {"instructions": "scenario:text", "max_output_tokens": 20,
                           "output_modalities": ["text"]}}

    def first_row_written() -> bool:
        from django.db import connection

        from usage.models import UsageRecord
        try:
            return UsageRecord.objects.filter(surface="realtime").exists()
        finally:
            connection.close()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({**create, "event_id": "evt_first"})
            await _until(conn, "response.done")
            assert await asyncio.to_thread(wait_for, first_row_written)
            await conn.send(create)
            refusal = (await _until(conn, "error"))[-1]
            item = ('{"type":"conversation.item.create","item":{"type":"message","role":"user",'
                    '"content":[{"type":"input_text","text":"still there?"}]}}')
            await conn.send_raw(item)
            await _until(conn, "conversation.item.created")
            return refusal

    refusal = asyncio.run(session())
    assert (refusal.error.type, refusal.error.code, refusal.error.event_id) == \
        ("rate_limit_error", "budget_exceeded", "evt_second")
    assert realtime_provider.received_types() == ["response.create", "conversation.item.create"]
    rows = _rows(ledger_rows, 3)
    assert sorted(r.status for r in rows["realtime"]) == ["ok", "rejected"]
    assert rows["realtime.session"][0].status == "ok"


def test_upstream_error_event_for_a_response_bills_nothing(gateway_url, realtime_provider,
                                                           make_key, ledger_rows):
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create", "event_id": "evt_bad",
                             "response": {"instructions": "scenario:invalid"}})
            return (await _until(conn, "error"))[-1]

    assert asyncio.run(session()).error.event_id == "evt_bad"
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.status, row.error_type, row.input_tokens, row.cost_usd) == \
        ("upstream_error", "invalid_value", 0, 0)


def test_oversized_message_and_idle_session_are_closed(gateway_url, realtime_provider, make_key,
                                                       ledger_rows, settings):
    settings.GATEWAY_REALTIME_MAX_MESSAGE_BYTES = 1024
    settings.GATEWAY_REALTIME_IDLE_TIMEOUT_S = 0.5
    key = make_key()
    headers = {"authorization": f"Bearer {key}"}

    async def sessions():
        codes = []
        async with websockets.connect(_ws_url(gateway_url), additional_headers=headers) as ws:
            await asyncio.wait_for(ws.recv(), BOUND_S)
            await ws.send('{"type":"conversation.item.create","pad":"' + "x" * 2048 + '"}')
            await asyncio.wait_for(ws.wait_closed(), BOUND_S)
            codes.append(ws.close_code)
        async with websockets.connect(_ws_url(gateway_url), additional_headers=headers) as ws:
            await asyncio.wait_for(ws.recv(), BOUND_S)
            await asyncio.wait_for(ws.wait_closed(), BOUND_S)
            codes.append(ws.close_code)
        return codes

    assert asyncio.run(sessions()) == [1009, 4008]
    assert "conversation.item.create" not in realtime_provider.received_types()
    rows = _rows(ledger_rows, 2)
    assert [r.status for r in rows["realtime.session"]] == ["ok", "ok"]


@pytest.fixture
def daphne_url(gateway_url, realtime_provider):
    """The same ASGI app under daphne (a subprocess on this test's database); skipped where
    daphne is not installed (it comes with bench/requirements.txt)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from django.conf import settings
    from django.db import connection

    pytest.importorskip("daphne")
    db = connection.settings_dict
    if not db["ENGINE"].endswith("sqlite3"):
        pytest.skip("the daphne check runs on the SQLite test database")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db['NAME']}", "DEBUG": "1",
           "GATEWAY_CONFIG_POLL_S": "0", "REDIS_URL": settings.REDIS_URL or ""}
    process = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                "gateway.asgi:application"], cwd=settings.BASE_DIR, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("daphne did not start")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


def test_daphne_serves_the_same_realtime_sessions(daphne_url, make_key, ledger_rows):
    key = make_key()

    async def session():
        async with _client(daphne_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send({"type": "response.create",
                             "response": {"instructions": "scenario:text"}})
            events = await _until(conn, "response.done")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(_ws_url(daphne_url),
                                          additional_headers={"authorization": "Bearer nope"}):
                pass
        return events, refused.value.response.status_code

    events, refused = asyncio.run(session())
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "Hello world"
    # daphne has no handshake-response extension: a refusal is a close before accepting
    assert refused == 403
    rows = _rows(ledger_rows, 2)
    assert (rows["realtime"][0].input_tokens, rows["realtime"][0].output_tokens) == (120, 40)
    assert rows["realtime.session"][0].status == "ok"


def test_an_upstream_refusing_the_socket_is_a_502_and_a_session_row(gateway_url,
                                                                    realtime_provider, make_key,
                                                                    ledger_rows):
    realtime_provider.refuse["rt-a"] = 401
    key = make_key()

    async def handshake():
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(_ws_url(gateway_url),
                                          additional_headers={"authorization": f"Bearer {key}"}):
                pass
        return refused.value.response.status_code, orjson.loads(refused.value.response.body)

    status, body = asyncio.run(handshake())
    assert status == 502 and body["error"]["code"] == "upstream_error"
    [row] = _rows(ledger_rows, 1)["realtime.session"]
    assert (row.status, row.http_status, row.error_type) == ("upstream_error", 502, "http_401")
