"""The Gemini codec (gateway.codecs.gemini) and Azure's filtered stream through the OpenAI
codec, against transcripts written from the providers' documented examples (golden/gemini_*
and golden/azure_*): decoded into IR events, encoded for every client surface and compared
event by event with the reviewed expectation (golden/<stream>.expected.json), and read back by
the official `anthropic` and `openai` SDKs. The request side: a conversation with a system
prompt, an image, a PDF, a tool call carrying its thought signature and its result, built
into the documented `GenerateContentRequest`.

After an intended change, regenerate and review the diff:
    .venv/bin/python gateway/tests/test_codecs_gemini.py --regenerate
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import anthropic
import openai
import pytest

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.codecs import anthropic_messages, gemini, openai_chat  # noqa: E402
from gateway.tests.test_codecs_golden import (GOLDEN, SURFACES, Expected, _dump,  # noqa: E402
                                              _transport, encode, ir_json, parse_sse,
                                              sse_bytes)
from gateway.types import (CodecOptions, SignatureDelta, Stop, TextDelta,  # noqa: E402
                           ThinkingDelta, ToolArgsDelta, ToolCallPart, ToolCallStart, Usage,
                           UsageUpdate)

SIG = "CiIBVKhc7oDPpCaXyJKKssjqr4g3JNOSgJ/M2V+1THC1icsWCmwBVKhc7pBABbZ+zR3vdA=="
STREAMS: dict[str, tuple[object, Expected]] = {
    "gemini_text": (gemini, Expected(
        thinking="**Counting the r's**\n\nI'll spell the word out.",
        text='There are three r\'s in "strawberry".', stop="end_turn",
        usage=Usage(input_tokens=1043, output_tokens=192, cached_tokens=1024,
                    reasoning_tokens=180))),
    "gemini_function_call": (gemini, Expected(
        tools=(("{id}__thought__" + SIG, "get_current_temperature", '{"location": "Paris"}'),
               ("{id}", "get_current_time", '{"tz": "Europe/Paris"}')),
        stop="tool_use", usage=Usage(input_tokens=71, output_tokens=119, reasoning_tokens=89))),
    "gemini_safety": (gemini, Expected(text="Here is how", stop="refusal",
                                       usage=Usage(input_tokens=14, output_tokens=3))),
    "gemini_prompt_blocked": (gemini, Expected(stop="refusal",
                                               usage=Usage(input_tokens=8))),
    "azure_content_filter": (openai_chat, Expected(
        text="The battle began", stop="refusal",
        usage=Usage(input_tokens=18, output_tokens=4))),
}


def decode(stream: str) -> list:
    decoder = STREAMS[stream][0].StreamDecoder()
    events = []
    for name, data in parse_sse((GOLDEN / f"{stream}.sse").read_text()):
        events.extend(decoder.feed(name, data))
    return _stable(events + decoder.finish())


def _stable(events: list) -> list:
    """Generated tool-call ids (Gemini sends none) replaced by `call_<n>`, so transcripts
    compare; the signature suffix stays."""
    out, ids = [], {}
    for ev in events:
        if isinstance(ev, ToolCallStart):
            base, signature = gemini.split_call_id(ev.id)
            ids.setdefault(base, f"call_{len(ids)}")
            ev = ToolCallStart(ev.index, gemini.call_id(ids[base], signature), ev.name)
        out.append(ev)
    return out


def transcript(stream: str) -> dict:
    events = decode(stream)
    return {"ir": ir_json(events), **{s: [list(e) for e in encode(s, events)] for s in SURFACES}}


@pytest.mark.parametrize("part", ("ir", *SURFACES))
@pytest.mark.parametrize("stream", STREAMS)
def test_translation_matches_golden_transcript_event_by_event(stream, part):
    actual = transcript(stream)[part]
    expected = json.loads((GOLDEN / f"{stream}.expected.json").read_text())[part]
    for i, (got, want) in enumerate(zip(actual, expected)):
        assert got == want, f"{stream} -> {part}: event {i} differs"
    assert len(actual) == len(expected)


@pytest.mark.parametrize("stream", STREAMS)
def test_ir_reassembles_exactly_what_the_upstream_sent(stream):
    expected = STREAMS[stream][1]
    events = decode(stream)
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    tools = tuple((s.id, s.name, "".join(e.partial_json for e in events
                                         if isinstance(e, ToolArgsDelta) and e.index == s.index))
                  for s in starts)
    want_tools = tuple((i.replace("{id}", f"call_{n}"), name, args)
                       for n, (i, name, args) in enumerate(expected.tools))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected.text
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == expected.thinking
    assert not [e for e in events if isinstance(e, SignatureDelta)]
    assert tools == want_tools
    assert [e.reason for e in events if isinstance(e, Stop)] == [expected.stop]
    assert [e.usage for e in events if isinstance(e, UsageUpdate)][-1] == expected.usage


@pytest.mark.parametrize("stream", STREAMS)
def test_the_sdks_parse_the_translated_streams(stream):
    expected = STREAMS[stream][1]
    events = decode(stream)
    client = anthropic.Anthropic(api_key="k", base_url="http://gateway.test", http_client=_transport(
        sse_bytes(encode("anthropic_messages", events))))
    with client.messages.stream(model="m", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        message = s.get_final_message()
    assert "".join(b.text for b in message.content if b.type == "text") == expected.text
    assert "".join(b.thinking for b in message.content if b.type == "thinking") \
        == expected.thinking
    assert [b.name for b in message.content if b.type == "tool_use"] \
        == [name for _, name, _ in expected.tools]
    assert (message.stop_reason, message.usage.output_tokens) == (expected.stop,
                                                                  expected.usage.output_tokens)
    chat = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", http_client=_transport(
        sse_bytes(encode("openai_chat", events))))
    chunks = list(chat.chat.completions.create(model="m", messages=[], stream=True))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [{"end_turn": "stop", "tool_use": "tool_calls",
                       "refusal": "content_filter"}[expected.stop]]
    assert chunks[-1].usage.prompt_tokens == expected.usage.input_tokens
    responses = openai.OpenAI(api_key="k", base_url="http://gateway.test/v1",
                              http_client=_transport(sse_bytes(encode("openai_responses", events))))
    with responses.responses.stream(model="m", input="hi") as s:
        final = list(s)[-1].response
    assert final.output_text == expected.text
    assert final.status == ("incomplete" if expected.stop == "refusal" else "completed")
    assert final.usage.input_tokens == expected.usage.input_tokens


def test_a_whole_answer_is_read_with_its_signatures_and_usage():
    body = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Plan: look it up.", "thought": True, "thoughtSignature": "c2lnLXRob3VnaHQ="},
        {"functionCall": {"name": "get_current_temperature", "args": {"location": "Paris"}},
         "thoughtSignature": SIG}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 71, "candidatesTokenCount": 30,
                          "thoughtsTokenCount": 89, "cachedContentTokenCount": 64,
                          "totalTokenCount": 190},
        "modelVersion": "gemini-2.5-pro", "responseId": "xbZKaO2sNMaEnvgPqLjx4Qs"}
    resp = gemini.parse_response(body)
    thinking, call = resp.content
    assert (thinking.text, thinking.signature) == ("Plan: look it up.", "c2lnLXRob3VnaHQ=")
    assert (call.name, call.arguments, call.signature) == (
        "get_current_temperature", '{"location": "Paris"}', SIG)
    assert gemini.split_call_id(call.id)[1] == SIG
    assert (resp.stop_reason, resp.id, resp.model) == ("tool_use", "xbZKaO2sNMaEnvgPqLjx4Qs",
                                                       "gemini-2.5-pro")
    assert resp.usage == Usage(input_tokens=71, output_tokens=119, cached_tokens=64,
                               reasoning_tokens=89)
    blocked = gemini.parse_response({"promptFeedback": {"blockReason": "SAFETY"}})
    assert (blocked.content, blocked.stop_reason) == ((), "refusal")


def test_the_request_is_the_documented_generate_content_request():
    call_id = gemini.call_id("call_1", SIG)
    req = anthropic_messages.parse_request({
        "model": "m", "max_tokens": 2048, "system": "Answer briefly.",
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "get_current_temperature", "description": "Temperature of a city",
                   "input_schema": {"type": "object",
                                    "properties": {"location": {"type": "string"}},
                                    "required": ["location"]}}],
        "tool_choice": {"type": "tool", "name": "get_current_temperature"},
        "stop_sequences": ["END"], "temperature": 0.5,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather where this photo is, per the PDF?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                             "data": "/9j/4AAQ"}},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf",
                                                "data": "JVBERi0x"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Paris, then.", "signature": "sig"},
                {"type": "tool_use", "id": call_id, "name": "get_current_temperature",
                 "input": {"location": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "21 C"}]}]})
    dropped: list[str] = []
    body = gemini.build_request(req, upstream_model="gemini-2.5-pro", stream=True,
                                options=CodecOptions(allow_documents=True, reasoning=True),
                                dropped=dropped)
    assert body == {
        "contents": [
            {"role": "user", "parts": [
                {"text": "Weather where this photo is, per the PDF?"},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_current_temperature",
                                  "args": {"location": "Paris"}}, "thoughtSignature": SIG}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_current_temperature",
                                      "response": {"output": "21 C"}}}]}],
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        "tools": [{"functionDeclarations": [{
            "name": "get_current_temperature", "description": "Temperature of a city",
            "parametersJsonSchema": {"type": "object",
                                     "properties": {"location": {"type": "string"}},
                                     "required": ["location"]}}]}],
        "toolConfig": {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": ["get_current_temperature"]}},
        "generationConfig": {"maxOutputTokens": 2048, "temperature": 0.5,
                             "stopSequences": ["END"],
                             "thinkingConfig": {"includeThoughts": True,
                                                "thinkingBudget": 1024}}}
    assert dropped == ["thinking"]
    assert isinstance(req.messages[1].content[1], ToolCallPart)


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    for name in STREAMS:
        (GOLDEN / f"{name}.expected.json").write_text(_dump(transcript(name)))
