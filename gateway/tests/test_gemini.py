"""The `gemini` kind end to end: a live gateway in front of the fake Gemini API
(gateway/tests/fake_azure_gemini.py), driven by the official `openai` and `anthropic` SDKs on
every surface, streamed and not; the fake itself checked against Google's `google-genai` SDK,
so the URLs, the API-key header and the answers it speaks are Gemini's own.

Prices: 1.00 input, 0.50 cached input, 2.00 output (USD per million). The fake reports 11
prompt tokens (4 cached), 5 candidate and 2 thought tokens: 7 x 1.00 + 4 x 0.50 + 7 x 2.00 =
23 micro-dollars.
"""
from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from gateway.tests.fake_azure_gemini import GEMINI_KEY, REPLY, SIGNATURE, fake_azure_gemini
from providers.config_file import ConfigError, config_parse
from usage.models import UsageRecord

COST = Decimal("0.0000230000")
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture
def gem(transactional_db):
    from providers.services import config_apply

    fake = fake_azure_gemini()
    config_apply(spec=config_parse(f"""
providers:
  - name: gem
    kind: gemini
    base_url: {fake.url("gemini")}/v1beta
    api_key: {GEMINI_KEY}
    models:
      gem-model: gemini-2.5-flash
prices:
  - model: gemini-2.5-flash
    input: "1.00"
    output: "2.00"
    cached_input: "0.50"
"""))
    return fake


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def _anthropic(url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=20)


def test_the_fake_answers_googles_own_sdk_as_gemini_does(gem):
    client = genai.Client(api_key=GEMINI_KEY, http_options=genai_types.HttpOptions(
        base_url=gem.url("gemini"), api_version="v1beta"))
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert response.text == REPLY
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.cached_content_token_count,
            usage.candidates_token_count, usage.thoughts_token_count) == (11, 4, 5, 2)
    chunks = list(client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi",
        config=genai_types.GenerateContentConfig(
            thinking_config=genai_types.ThinkingConfig(include_thoughts=True,
                                                       thinking_budget=512))))
    assert "".join(p.text for c in chunks for p in c.candidates[0].content.parts
                   if not p.thought) == REPLY
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    called = client.models.generate_content(
        model="gemini-2.5-flash", contents="weather in Zürich?",
        config=genai_types.GenerateContentConfig(tools=[genai_types.Tool(
            function_declarations=[genai_types.FunctionDeclaration(
                name="get_weather", parameters_json_schema=TOOL["function"]["parameters"])])]))
    part = called.candidates[0].content.parts[0]
    assert (part.function_call.name, part.function_call.args) == ("get_weather",
                                                                  {"city": "Zürich"})
    assert part.thought_signature  # bytes: the SDK decodes the base64
    plain, streamed, _ = gem.seen("/gemini/")
    assert plain.path == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert streamed.path == "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert streamed.query == {"alt": "sse"}
    assert plain.headers["x-goog-api-key"] == GEMINI_KEY
    # google-genai writes the inner fields in snake_case, which the API accepts too.
    assert streamed.body["generationConfig"]["thinkingConfig"] == {"include_thoughts": True,
                                                                   "thinking_budget": 512}


def _text(surface: str, url: str, key: str, stream: bool, **extra) -> tuple[str, str]:
    if surface == "chat":
        client = _openai(url, key)
        kwargs = dict(model="gem-model", messages=[{"role": "user", "content": "hi"}], **extra)
        if stream:
            chunks = list(client.chat.completions.create(**kwargs, stream=True))
            return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                    [c.choices[0].finish_reason for c in chunks
                     if c.choices and c.choices[0].finish_reason][0])
        c = client.chat.completions.create(**kwargs)
        return c.choices[0].message.content or "", c.choices[0].finish_reason
    if surface == "responses":
        client = _openai(url, key)
        if stream:
            with client.responses.stream(model="gem-model", input="hi") as s:
                response = list(s)[-1].response
        else:
            response = client.responses.create(model="gem-model", input="hi")
        return response.output_text, response.status
    client = _anthropic(url, key)
    kwargs = dict(model="gem-model", max_tokens=4096, messages=[{"role": "user", "content": "hi"}],
                  **extra)
    if stream:
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    return "".join(b.text for b in message.content if b.type == "text"), message.stop_reason


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("surface", ["chat", "responses", "messages"])
def test_every_surface_reaches_gemini_and_bills_its_usage(
        gateway_url, gem, api_key, ledger_rows, surface, stream):
    text, stop = _text(surface, gateway_url, api_key, stream)
    assert (text, stop) == (REPLY, {"chat": "stop", "responses": "completed",
                                    "messages": "end_turn"}[surface])
    [seen] = gem.seen("/gemini/")
    action = "streamGenerateContent" if stream else "generateContent"
    assert seen.path == f"/gemini/v1beta/models/gemini-2.5-flash:{action}"
    assert seen.query == ({"alt": "sse"} if stream else {})
    assert seen.headers["x-goog-api-key"] == GEMINI_KEY and "authorization" not in seen.headers
    assert seen.body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    [row] = ledger_rows(1)
    assert (row.status, row.usage_source, row.provider_name, row.stream) == \
        ("ok", "reported", "gem", stream)
    assert (row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens) == \
        (11, 4, 7, 2)
    assert row.cost_usd == COST


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_thinking_budgets_become_thinking_config_and_thoughts_come_back(
        gateway_url, gem, api_key, stream):
    client = _anthropic(gateway_url, api_key)
    kwargs = dict(model="gem-model", max_tokens=4096, messages=[{"role": "user", "content": "hi"}],
                  thinking={"type": "enabled", "budget_tokens": 2048})
    if stream:
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking.startswith("**Thinking it over**")
    assert gem.requests[-1].body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True, "thinkingBudget": 2048}
    _text("chat", gateway_url, api_key, stream, reasoning_effort="high")
    assert gem.requests[-1].body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True, "thinkingBudget": 8000}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_function_calls_thought_signature_comes_back_on_the_next_turn(
        gateway_url, gem, api_key, ledger_rows, stream):
    client = _openai(gateway_url, api_key)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Zürich?"}]
    kwargs = dict(model="gem-model", messages=messages, tools=[TOOL])
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert {t.index for t in fragments} == {0}
        call_id, name = fragments[0].id, fragments[0].function.name
        arguments = "".join(t.function.arguments or "" for t in fragments)
        assert [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    else:
        completion = client.chat.completions.create(**kwargs)
        [call] = completion.choices[0].message.tool_calls
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        assert completion.choices[0].finish_reason == "tool_calls"
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Zürich"})
    assert call_id.endswith("__thought__" + SIGNATURE)
    first = gem.requests[-1].body
    assert first["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert first["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == \
        TOOL["function"]["parameters"]

    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "21 C, sunny"}]
    answer = client.chat.completions.create(model="gem-model", messages=messages, tools=[TOOL])
    assert answer.choices[0].message.content == REPLY
    second = gem.requests[-1].body["contents"]
    assert second[1] == {"role": "model", "parts": [{
        "functionCall": {"name": "get_weather", "args": {"city": "Zürich"}},
        "thoughtSignature": SIGNATURE}]}
    assert second[2] == {"role": "user", "parts": [{"functionResponse": {
        "name": "get_weather", "response": {"output": "21 C, sunny"}}}]}
    assert [r.status for r in ledger_rows(2)] == ["ok", "ok"]


def test_the_signature_also_survives_an_anthropic_tool_loop(gateway_url, gem, api_key):
    client = _anthropic(gateway_url, api_key)
    tool = {"name": "get_weather", "input_schema": TOOL["function"]["parameters"]}
    messages = [{"role": "user", "content": "Weather in Zürich?"}]
    first = client.messages.create(model="gem-model", max_tokens=256, tools=[tool],
                                   messages=messages)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "21 C"}]}]
    second = client.messages.create(model="gem-model", max_tokens=256, tools=[tool],
                                    messages=messages)
    assert second.content[0].text == REPLY
    assert gem.requests[-1].body["contents"][1]["parts"][0]["thoughtSignature"] == SIGNATURE


@pytest.mark.parametrize("block", ["safety", "prompt"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_safety_blocks_are_refusals_on_every_surface(
        gateway_url, gem, api_key, ledger_rows, block, stream):
    gem.behaviour.block = block
    assert _text("chat", gateway_url, api_key, stream)[1] == "content_filter"
    assert _text("messages", gateway_url, api_key, stream)[1] == "refusal"
    assert _text("responses", gateway_url, api_key, stream)[1] == "incomplete"
    rows = ledger_rows(3)
    assert [(r.status, r.usage_source, r.input_tokens) for r in rows] == \
        [("ok", "reported", 11)] * 3


def test_the_admin_connection_test_reaches_gemini(gem):
    from providers.admin import provider_connection_test
    from providers.models import Provider

    result = provider_connection_test(Provider.objects.get(name="gem"))
    assert result.ok, result.text
    assert "promptTokenCount 11" in result.text
    [seen] = gem.seen("/gemini/")
    assert seen.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert seen.body["generationConfig"] == {"maxOutputTokens": 1}


def test_the_routing_file_and_the_admin_need_a_gemini_api_key(transactional_db):
    from providers.admin import ProviderForm

    with pytest.raises(ConfigError, match="api_key: required for kind gemini"):
        config_parse("providers:\n  - name: g\n    kind: gemini\n"
                     "    base_url: https://generativelanguage.googleapis.com/v1beta\n")
    with pytest.raises(ConfigError, match="api_version: only for kind azure_openai"):
        config_parse("providers:\n  - name: g\n    kind: gemini\n    api_key: k\n"
                     "    base_url: https://generativelanguage.googleapis.com/v1beta\n"
                     "    translation: {api_version: v1}\n")
    form = ProviderForm(data={"name": "g", "kind": "gemini", "weight": 1, "priority": 0,
                              "base_url": "https://generativelanguage.googleapis.com/v1beta",
                              "timeout_s": 60, "max_inflight": 8, "breaker_failures": 5,
                              "breaker_cooldown_s": 30, "extra_headers": "{}",
                              "translation": "{}"})
    assert not form.is_valid() and "api_key" in form.errors
