"""The worst case a realtime response reserves (gateway.admission.worst_case_cost): the output
at the audio output rate when the response may answer in audio, the conversation's audio at
the audio input rate, each rate falling back to the text one when the price has none
(docs/ledger.md); and which modalities a response has (gateway.realtime.accounting). Pure:
no server, no database.

Price: 4 input, 16 output, 32 audio input, 64 audio output (USD per million tokens)."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal

from gateway.admission import worst_case_cost
from gateway.realtime import accounting
from gateway.routing import Candidate
from providers.selectors import Deployment, PriceInfo, RoutingSnapshot

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
PRICE = PriceInfo(id=1, input_per_mtok=Decimal("4"), output_per_mtok=Decimal("16"),
                  cached_input_per_mtok=None, effective_from=datetime(2025, 1, 1,
                                                                      tzinfo=timezone.utc),
                  audio_input_per_mtok=Decimal("32"), audio_output_per_mtok=Decimal("64"))
DEPLOYMENT = Deployment(route_id=1, provider_id=7, provider_name="rt", kind="openai",
                        base_url="http://upstream", upstream_model="up-rt", weight=1,
                        priority=0, timeout_s=10, max_inflight=0,
                        candidate=Candidate(route_id=1, provider_id=7))


def _worst(price: PriceInfo = PRICE, **kwargs) -> Decimal:
    snapshot = RoutingSnapshot(version=None, deployments={}, prices={(7, "up-rt"): (price,)})
    return worst_case_cost(snapshot, (DEPLOYMENT,), at=AT, **kwargs)


def test_an_audio_response_reserves_its_output_at_the_audio_rate():
    # 1000 x 4 + 500 x 64 = 36000 per million
    assert _worst(prompt_tokens=1000, max_tokens=500, audio_output=True) == Decimal("0.036")
    # the same response in text: 1000 x 4 + 500 x 16 = 12000 per million
    assert _worst(prompt_tokens=1000, max_tokens=500) == Decimal("0.012")


def test_the_conversations_audio_is_reserved_at_the_audio_input_rate():
    # 700 x 4 + 300 x 32 + 500 x 64 = 2800 + 9600 + 32000 per million
    assert _worst(prompt_tokens=1000, max_tokens=500, audio_input_tokens=300,
                  audio_output=True) == Decimal("0.0444")


def test_without_audio_rates_the_text_rates_apply():
    bare = replace(PRICE, audio_input_per_mtok=None, audio_output_per_mtok=None)
    assert _worst(bare, prompt_tokens=1000, max_tokens=500, audio_input_tokens=300,
                  audio_output=True) == Decimal("0.012")


def test_audio_never_reserves_less_than_text():
    cheap = replace(PRICE, audio_output_per_mtok=Decimal("2"))
    # the audio rate (500 x 2) is below the text one (500 x 16): the text output is the worst
    assert _worst(cheap, prompt_tokens=0, max_tokens=500, audio_output=True) == Decimal("0.008")


def test_a_responses_modalities_come_from_it_else_from_the_session():
    text = {"type": "response.create", "response": {"output_modalities": ["text"]}}
    beta = {"type": "response.create", "response": {"modalities": ["text", "audio"]}}
    bare = {"type": "response.create"}
    assert accounting.response_audio(text, session_audio=True) is False
    assert accounting.response_audio(beta, session_audio=False) is True
    assert accounting.response_audio(bare, session_audio=True) is True
    assert accounting.response_audio(bare, session_audio=False) is False


def test_turn_detection_is_read_and_rewritten_in_both_protocols():
    ga = {"type": "session.created", "session": {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}
    beta = {"type": "session.created", "session": {
        "modalities": ["text", "audio"], "turn_detection": {"type": "semantic_vad"}}}
    for event in (ga, beta):
        named, detection = accounting.turn_detection(event["session"])
        assert named and accounting.creates_responses(detection)
        off = accounting.with_create_response(event, False)
        assert accounting.creates_responses(accounting.turn_detection(off["session"])[1]) \
            is False
    assert accounting.turn_update(ga)["session"] == {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500,
                           "create_response": False}}}}
    assert accounting.turn_update(beta)["session"] == {
        "turn_detection": {"type": "semantic_vad", "create_response": False}}
    assert accounting.turn_detection({"turn_detection": None}) == (True, None)
    assert accounting.turn_detection({"instructions": "hi"}) == (False, None)
