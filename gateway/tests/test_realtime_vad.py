"""Realtime responses admitted at audio rates, and server VAD with the gateway creating the
responses, end to end: the `openai` SDK's realtime client against the live gateway and the
fake realtime upstream (gateway/tests/fake_realtime.py: `server_vad` sessions start as
OpenAI's do, with `create_response: true`; SPEECH_STOP ends a turn).

Price (test_realtime's provider): 4 input, 16 output, 32 audio input, 64 audio output USD per
million tokens. A budget of 0.0005 USD holds a 20-token text response's worst case (20 x 16 =
0.00032) but not an audio one's (20 x 64 = 0.00128)."""
from __future__ import annotations

import asyncio
import base64

import orjson

from gateway.tests.fake_realtime import SPEECH_STOP, USAGE
from gateway.tests.test_realtime import (_client, _expected_cost,  # noqa: F401
                                         _fake_realtime_server, _rows, _until, fake_realtime,
                                         realtime_provider)

SILENCE = base64.b64encode(bytes(4800)).decode()


def _detection(session: dict) -> dict:
    return session["audio"]["input"]["turn_detection"]


def test_server_vad_turns_get_responses_the_gateway_creates_and_bills(
        gateway_url, realtime_provider, make_key, ledger_rows):
    fake = realtime_provider
    fake.server_vad.add("rt-a")
    key = make_key()

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            created = (await _until(conn, "session.created"))[-1].to_dict()
            # the answer to the gateway's own session.update, shown as the client's session is
            updated = (await _until(conn, "session.updated"))[-1].to_dict()
            await conn.send({"type": "input_audio_buffer.append", "audio": SILENCE})
            await conn.send({"type": "input_audio_buffer.append", "audio": SPEECH_STOP})
            turn = await _until(conn, "response.done")
            # a commit of the client's own gets no response from anyone
            await conn.send({"type": "input_audio_buffer.commit"})
            await _until(conn, "conversation.item.created")
            await conn.send_raw('{"type":"conversation.item.create","item":{"type":"message",'
                                '"role":"user","content":[{"type":"input_text","text":"ok"}]}}')
            await _until(conn, "conversation.item.created")
            return created, updated, turn

    created, updated, turn = asyncio.run(session())
    assert _detection(created["session"])["create_response"] is True
    assert _detection(updated["session"])["create_response"] is True
    assert [e.type for e in turn][:3] == ["input_audio_buffer.speech_stopped",
                                          "input_audio_buffer.committed",
                                          "conversation.item.created"]
    assert sum(e.type == "response.output_audio.delta" for e in turn) == 3
    assert turn[-1].response.usage.output_token_details.audio_tokens == 250
    assert fake.received_types() == ["session.update", "input_audio_buffer.append",
                                     "input_audio_buffer.append", "response.create",
                                     "input_audio_buffer.commit", "conversation.item.create"]
    gateway_update = orjson.loads(fake.received[0])
    assert gateway_update["session"] == {"type": "realtime", "audio": {"input": {
        "turn_detection": {**_detection(created["session"]), "create_response": False}}}}
    assert orjson.loads(fake.received[3]) == {"type": "response.create",
                                              "event_id": orjson.loads(fake.received[3])
                                              ["event_id"]}
    assert fake.auto_responses == 0  # the upstream created none itself
    rows = _rows(ledger_rows, 2)
    [row] = rows["realtime"]
    assert (row.status, row.input_tokens, row.output_tokens, row.audio_output_tokens) == (
        "ok", 700, 300, 250)
    assert row.cost_usd == _expected_cost(USAGE["audio"])


def test_the_clients_own_turn_detection_is_kept_as_it_asked(gateway_url, realtime_provider,
                                                            make_key, ledger_rows):
    fake = realtime_provider
    key = make_key()
    update = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}}

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            await conn.send(update)
            return (await _until(conn, "session.updated"))[-1].to_dict()

    updated = asyncio.run(session())
    sent = orjson.loads(fake.received[0])
    assert _detection(sent["session"]) == {"type": "server_vad", "silence_duration_ms": 300,
                                           "create_response": False}
    assert _detection(updated["session"])["create_response"] is True


def test_a_budget_admits_a_text_response_and_refuses_an_audio_one(
        gateway_url, realtime_provider, make_key, ledger_rows):
    fake = realtime_provider
    key = make_key(budget_usd="0.0005")

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.created")
            # the session's default output is audio
            await conn.send({"type": "response.create", "event_id": "evt_audio",
                             "response": {"max_output_tokens": 20}})
            refusal = (await _until(conn, "error"))[-1]
            await conn.send({"type": "response.create", "event_id": "evt_text",
                             "response": {"max_output_tokens": 20,
                                          "output_modalities": ["text"]}})
            done = (await _until(conn, "response.done"))[-1]
            return refusal, done

    refusal, done = asyncio.run(session())
    assert (refusal.error.code, refusal.error.event_id) == ("budget_exceeded", "evt_audio")
    assert done.response.status == "completed"
    assert fake.received_types() == ["response.create"]
    assert orjson.loads(fake.received[0])["event_id"] == "evt_text"
    rows = _rows(ledger_rows, 3)
    assert sorted(r.status for r in rows["realtime"]) == ["ok", "rejected"]


def test_a_vad_turn_over_budget_is_refused_with_an_error_event_and_the_session_goes_on(
        gateway_url, realtime_provider, make_key, ledger_rows):
    fake = realtime_provider
    fake.server_vad.add("rt-a")
    key = make_key(budget_usd="0.0005", max_tokens_default=20)

    async def session():
        async with _client(gateway_url, key).realtime.connect(model="gpt-rt") as conn:
            await _until(conn, "session.updated")  # the gateway's create_response: false
            await conn.send({"type": "input_audio_buffer.append", "audio": SPEECH_STOP})
            refusal = (await _until(conn, "error"))[-1]
            await conn.send({"type": "session.update", "session": {
                "type": "realtime", "output_modalities": ["text"]}})
            await _until(conn, "session.updated")
            await conn.send({"type": "input_audio_buffer.append", "audio": SPEECH_STOP})
            done = (await _until(conn, "response.done"))[-1]
            return refusal, done

    refusal, done = asyncio.run(session())
    assert (refusal.error.type, refusal.error.code, refusal.error.event_id) == (
        "rate_limit_error", "budget_exceeded", None)
    assert done.response.usage.output_tokens == USAGE["text"]["output_tokens"]
    assert fake.received_types() == ["session.update", "input_audio_buffer.append",
                                     "session.update", "input_audio_buffer.append",
                                     "response.create"]
    assert fake.auto_responses == 0
    rows = _rows(ledger_rows, 3)
    assert sorted(r.status for r in rows["realtime"]) == ["ok", "rejected"]
