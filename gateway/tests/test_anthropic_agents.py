"""Coding agents on /v1/messages through a live gateway (Claude Code's request shape, sent
with raw httpx as the CLI sends it, and the anthropic SDK): every documented field accepted,
passed through untouched to an Anthropic upstream with the client's `anthropic-beta` header
(edited per provider), translated for an OpenAI-compatible one with what it cannot take named
in `x-gateway-dropped`; `message_start` announcing the prompt; and upstreams that answer a
streamed request with one JSON body, relayed as a stream on every surface."""
from __future__ import annotations

import json
import re

import anthropic
import httpx
import openai
import pytest

from gateway.tests.fake_upstream import MID_CONVERSATION_SYSTEM_BETA
from providers.config_file import config_parse
from providers.services import config_apply
from providers.translation import translation_problem

BETAS = f"claude-code-20250219,interleaved-thinking-2025-05-14,{MID_CONVERSATION_SYSTEM_BETA}"
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}


def claude_code_body(model: str, *, stream: bool = False) -> dict:
    """What Claude Code sends for a model name it does not know as a Claude model."""
    return {
        "model": model, "max_tokens": 32000, "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "say hi",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Working directory: /tmp/w"},
        ],
        "tools": [BASH, {"type": "web_search_20250305", "name": "web_search"}],
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "session-1"},
    }


def _post(url: str, key: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/messages", json=body, timeout=20, headers={
        "x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": BETAS, **headers})


def _sse(text: str) -> list[tuple[str | None, dict]]:
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and line[6:] != "[DONE]":
            events.append((name, json.loads(line[6:])))
            name = None
    return events


@pytest.mark.parametrize("stream", [False, True])
def test_claude_code_request_to_an_openai_upstream_names_what_it_dropped(
        gateway_url, fake_provider, api_key, ledger_rows, stream):
    response = _post(gateway_url, api_key, claude_code_body("gpt-test", stream=stream))
    assert response.status_code == 200, response.text
    dropped = response.headers["x-gateway-dropped"].split(", ")
    assert dropped == ["tools[1] (web_search_20250305)", "context_management", "thinking",
                       "output_config.effort", "cache_control"]
    sent = fake_provider.calls("fake-a")[0]
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user", "system"]
    assert sent.body["messages"][2]["content"] == "Working directory: /tmp/w"
    assert [t["function"]["name"] for t in sent.body["tools"]] == ["Bash"]
    assert "reasoning_effort" not in sent.body and "anthropic-beta" not in sent.headers
    if stream:
        start = _sse(response.text)[0][1]
        assert start["type"] == "message_start"
        assert start["message"]["usage"]["input_tokens"] > 0  # the gateway's estimate
        assert _sse(response.text)[-1][1]["type"] == "message_stop"
    assert ledger_rows(1)[0].status == "ok"


def test_claude_code_request_to_an_anthropic_upstream_passes_untouched_with_its_betas(
        gateway_url, fake_anthropic_provider, api_key):
    body = claude_code_body("claude-test")
    response = _post(gateway_url, api_key, body)
    assert response.status_code == 200, response.text
    assert "x-gateway-dropped" not in response.headers
    sent = fake_anthropic_provider.calls("fake-anth")[0]
    assert sent.body == {**body, "model": "up-claude"}
    assert sent.headers["anthropic-beta"] == BETAS
    assert sent.headers["anthropic-version"] == "2023-06-01"


def test_without_the_beta_the_upstreams_refusal_keeps_anthropics_wording(
        gateway_url, fake_anthropic_provider, api_key):
    fake_anthropic_provider.behave("fake-anth", system_turns=False)
    response = _post(gateway_url, api_key, claude_code_body("claude-test"),
                     **{"anthropic-beta": "claude-code-20250219"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    # Claude Code retries without system turns when the message matches this (its own test).
    assert re.search(r"Input should be [\\'\"`]{1,2}(?:user|assistant)\b.{0,2} or", message)


def test_an_invalid_role_is_the_gateways_400_in_anthropics_words(gateway_url, fake_provider,
                                                                  api_key):
    body = {**claude_code_body("gpt-test"), "messages": [{"role": "tool", "content": "x"}]}
    response = _post(gateway_url, api_key, body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == \
        "messages.0.role: Input should be 'user' or 'assistant'"
    assert fake_provider.calls() == []


def _beta_provider(fake_upstream, translation: str) -> None:
    config_apply(spec=config_parse(f"""
providers:
  - name: anth-betas
    kind: anthropic
    base_url: {fake_upstream.base_url("anth-betas")}
    translation: {translation}
    models: {{claude-test: up-claude}}
"""))


def test_a_provider_adds_and_removes_betas(gateway_url, fake_upstream, api_key):
    _beta_provider(fake_upstream, "{anthropic_beta: {add: [context-1m-2025-08-07], "
                                  "remove: [interleaved-thinking-2025-05-14]}}")
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0)
    client.messages.create(model="claude-test", max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}],
                           extra_headers={"anthropic-beta": BETAS})
    client.messages.create(model="claude-test", max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}])
    with_betas, without = fake_upstream.calls("anth-betas")
    assert with_betas.headers["anthropic-beta"] == \
        f"claude-code-20250219,{MID_CONVERSATION_SYSTEM_BETA},context-1m-2025-08-07"
    assert without.headers["anthropic-beta"] == "context-1m-2025-08-07"


@pytest.mark.parametrize("value, problem", [
    ({"anthropic_beta": ["x"]}, "anthropic_beta: must be a mapping"),
    ({"anthropic_beta": {"pin": ["x"]}}, "anthropic_beta: pin: unknown"),
    ({"anthropic_beta": {"add": ["a,b"]}}, "anthropic_beta: add: must be a list"),
    ({"reasoning": "yes"}, "reasoning: must be true or false"),
    ({"max_output_tokens": 0}, "max_output_tokens: must be a positive integer"),
])
def test_translation_settings_are_checked(value, problem):
    assert (translation_problem(value) or "").startswith(problem)


def _json_streaming(fake_upstream) -> None:
    fake_upstream.behave("fake-a", stream_as_json=True, reply="Whole body, streamed.")
    fake_upstream.behave("fake-anth", stream_as_json=True, reply="Whole body, streamed.")


def test_a_json_answer_to_a_stream_reaches_an_anthropic_client_as_a_stream(
        gateway_url, fake_provider, fake_anthropic_provider, api_key, ledger_rows):
    _json_streaming(fake_upstream=fake_provider)
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0)
    for model in ("gpt-test", "claude-test"):  # translated, then passed through
        with client.messages.stream(model=model, max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            message = stream.get_final_message()
        assert message.content[0].text == "Whole body, streamed."
        assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 7)
    assert [r.status for r in ledger_rows(2)] == ["ok", "ok"]
    assert [r.output_tokens for r in ledger_rows(2)] == [7, 7]


def test_a_json_answer_to_a_stream_reaches_openai_clients_as_a_stream(
        gateway_url, fake_provider, fake_anthropic_provider, api_key, ledger_rows):
    _json_streaming(fake_upstream=fake_provider)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    for model in ("gpt-test", "claude-test"):  # passed through, then translated
        chunks = list(client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
            == "Whole body, streamed."
        assert chunks[-1].usage.completion_tokens == 7
    with client.responses.stream(model="gpt-test", input="hi") as stream:
        assert stream.get_final_response().output_text == "Whole body, streamed."
    assert [r.status for r in ledger_rows(3)] == ["ok"] * 3
