"""Capabilities per route (issue 16): a route's reasoning, output limit and Responses wire,
resolved from the route, its provider, the catalog or the default (providers.capabilities),
decide the body its upstream receives.

Golden transcripts (golden/route_capabilities/<case>.expected.json): a route as the routing
file gives it and a client body in; the resolved capabilities with their sources, the kind the
route speaks, the upstream body and what was dropped out. Then the same through a live gateway:
Claude Code's thinking budget and adaptive thinking with `output_config.effort`, sent with the
anthropic SDK, as the fake OpenAI-compatible upstream received them, with `x-gateway-dropped`;
and a route's `responses_api` over its provider's, both ways.

After an intended change, regenerate the expectations and review the diff:
    .venv/bin/python gateway/tests/test_route_capabilities.py --regenerate
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

if __name__ == "__main__":  # run as a script: make `gateway` importable, Django set up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    import django
    django.setup()

from gateway.codecs import anthropic_messages, openai_chat  # noqa: E402
from gateway.dialects import dialect_for  # noqa: E402
from providers.capabilities import route_capabilities_resolve  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "route_capabilities"
CLIENT = {"anthropic_messages": anthropic_messages, "openai_chat": openai_chat}
SELF_HOSTED = "http://10.0.0.7:8000/v1"  # an OpenAI-compatible server the catalog does not know

# What Claude Code sends with a Claude model name: a thinking budget of 31,999 in 32,000.
CLAUDE_CODE_BUDGET = {
    "model": "gw", "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code."}],
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "messages": [{"role": "user", "content": "Plan the refactor."}],
}
# ... and with a name it does not know: adaptive thinking with an effort.
CLAUDE_CODE_ADAPTIVE = {
    "model": "gw", "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code."}],
    "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
    "messages": [{"role": "user", "content": "Plan the refactor."}],
}
OPENAI_EFFORT = {"model": "gw", "max_tokens": 200000, "reasoning_effort": "low",
                 "messages": [{"role": "user", "content": "Sum 2 and 2."}]}

# case -> (provider {kind, base_url, translation}, route {upstream_model, reasoning,
#          max_output_tokens, responses_api}, client surface, client body)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str, dict[str, Any]]] = {
    # The route says it reasons and caps output: the budget is an effort, max_tokens lowered.
    "route_reasons_budget": (
        {"kind": "openai", "base_url": SELF_HOSTED, "translation": {}},
        {"upstream_model": "kimi-k2.5", "reasoning": True, "max_output_tokens": 16000},
        "anthropic_messages", CLAUDE_CODE_BUDGET),
    "route_reasons_adaptive": (
        {"kind": "openai", "base_url": SELF_HOSTED, "translation": {}},
        {"upstream_model": "kimi-k2.5", "reasoning": True, "max_output_tokens": 16000},
        "anthropic_messages", CLAUDE_CODE_ADAPTIVE),
    # The route says it does not reason, over a provider that says it does: all dropped.
    "route_does_not_reason": (
        {"kind": "openai", "base_url": SELF_HOSTED,
         "translation": {"reasoning": True, "max_output_tokens": 64000}},
        {"upstream_model": "kimi-k2.5", "reasoning": False},
        "anthropic_messages", CLAUDE_CODE_ADAPTIVE),
    # Nothing set: unknown model, unknown wire: thinking dropped, max_tokens as sent.
    "nothing_known": (
        {"kind": "openai", "base_url": SELF_HOSTED, "translation": {}},
        {"upstream_model": "kimi-k2.5"},
        "anthropic_messages", CLAUDE_CODE_BUDGET),
    # Catalog and family table: o3 reasons (family), its window (catalog) is above 32,000.
    "catalog_reasoning_model": (
        {"kind": "openai", "base_url": "", "translation": {}},
        {"upstream_model": "o3"},
        "anthropic_messages", CLAUDE_CODE_BUDGET),
    # gpt-4o refuses an effort (family): the client's own is dropped and named; max_tokens
    # above the catalog's window (128,000) is clamped to it.
    "catalog_clamps_and_drops_effort": (
        {"kind": "openai", "base_url": "", "translation": {}},
        {"upstream_model": "gpt-4o"},
        "openai_chat", OPENAI_EFFORT),
    # Into Anthropic: the route's limit lowers max_tokens and the budget below it.
    "route_limit_into_anthropic": (
        {"kind": "anthropic", "base_url": "", "translation": {}},
        {"upstream_model": "claude-sonnet-4-5", "max_output_tokens": 8000},
        "openai_chat", {"model": "gw", "max_tokens": 20000, "reasoning_effort": "high",
                        "messages": [{"role": "user", "content": "Plan it."}]}),
    # A route marked responses_api of a provider that is not: Responses upstream, clamped.
    "route_speaks_responses": (
        {"kind": "openai", "base_url": SELF_HOSTED, "translation": {}},
        {"upstream_model": "gpt-5-codex", "responses_api": True, "max_output_tokens": 32000},
        "anthropic_messages", CLAUDE_CODE_BUDGET),
    # ... and the reverse: the provider speaks Responses, this route Chat Completions.
    "route_speaks_chat": (
        {"kind": "openai", "base_url": SELF_HOSTED, "translation": {"responses_api": True}},
        {"upstream_model": "gpt-5-codex", "responses_api": False},
        "anthropic_messages", CLAUDE_CODE_BUDGET),
}


def translate(case: str) -> dict[str, Any]:
    provider, route, surface, body = CASES[case]
    caps = route_capabilities_resolve(**provider, **route)
    req = CLIENT[surface].parse_request(body)
    dropped = list(req.dropped)
    built = dialect_for(caps.kind).codec.build_request(
        req, upstream_model=route["upstream_model"], stream=False,
        options=caps.codec_options, dropped=dropped)
    return {"capabilities": {"kind": caps.kind, "reasoning": asdict(caps.reasoning),
                             "max_output_tokens": asdict(caps.max_output_tokens),
                             "responses_api": asdict(caps.responses_api)},
            "body": built, "dropped": dropped}


@pytest.mark.parametrize("case", CASES)
def test_route_capabilities_match_golden(case: str) -> None:
    want = json.loads((GOLDEN / f"{case}.expected.json").read_text())
    assert translate(case) == want


def test_the_golden_transcripts_say_what_the_issue_asks() -> None:
    """The reviewed expectations, restated where a regeneration could slip past review."""
    budget = translate("route_reasons_budget")
    assert (budget["body"]["reasoning_effort"], budget["body"]["max_tokens"]) == ("high", 16000)
    assert budget["capabilities"]["reasoning"] == {"value": True, "source": "route"}
    adaptive = translate("route_reasons_adaptive")
    assert adaptive["body"]["reasoning_effort"] == "high" and adaptive["dropped"] == []
    off = translate("route_does_not_reason")
    assert "reasoning_effort" not in off["body"] and off["body"]["max_tokens"] == 32000
    assert off["dropped"] == ["thinking", "output_config.effort"]
    assert off["capabilities"]["max_output_tokens"] == {"value": 64000, "source": "provider"}
    unknown = translate("nothing_known")
    assert unknown["dropped"] == ["thinking"] and unknown["body"]["max_tokens"] == 32000
    o3 = translate("catalog_reasoning_model")["capabilities"]
    assert (o3["reasoning"], o3["max_output_tokens"]) == (
        {"value": True, "source": "model family"}, {"value": 200000, "source": "catalog"})
    gpt4o = translate("catalog_clamps_and_drops_effort")
    assert gpt4o["body"]["max_tokens"] == 128000 and gpt4o["dropped"] == ["reasoning_effort"]
    anthropic = translate("route_limit_into_anthropic")["body"]
    assert anthropic["max_tokens"] == 8000
    assert anthropic["thinking"] == {"type": "enabled", "budget_tokens": 7999}
    responses = translate("route_speaks_responses")
    assert responses["capabilities"]["kind"] == "openai_responses"
    assert responses["body"]["max_output_tokens"] == 32000
    assert responses["body"]["reasoning"] == {"effort": "high"}
    assert translate("route_speaks_chat")["capabilities"]["kind"] == "openai"


def _routes(fake_upstream, *, reasoning: str, limit: str = "") -> None:
    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: caps
    kind: openai
    base_url: {fake_upstream.base_url("caps")}
    api_key: sk-caps
    models:
      gw-model: {{upstream: up-model, reasoning: {reasoning}{limit}}}
"""))


# Claude Code's request as it sends it, tools and a cached system prompt included.
CLAUDE_CODE_LIVE = {
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Plan the refactor."}],
    "tools": [{"name": "Bash", "description": "Run a shell command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}}}}],
}
UPSTREAM_TOOLS = [{"type": "function", "function": {
    "name": "Bash", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]
UPSTREAM_MESSAGES = [{"role": "system", "content": "You are Claude Code."},
                     {"role": "user", "content": "Plan the refactor."}]


@pytest.mark.parametrize("stream", [False, True])
def test_claude_code_thinking_reaches_a_reasoning_route_as_an_effort_within_its_limit(
        gateway_url, fake_upstream, api_key, stream):
    import anthropic

    _routes(fake_upstream, reasoning="true", limit=", max_output_tokens: 16000")
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0, timeout=30)
    budget = {"thinking": {"type": "enabled", "budget_tokens": 31999}}
    adaptive = {"thinking": {"type": "adaptive"}, "extra_body": {"output_config": {
        "effort": "high"}}}
    for extra in (budget, adaptive):
        raw = client.messages.with_raw_response.create(
            model="gw-model", stream=stream, **CLAUDE_CODE_LIVE, **extra)
        if stream:
            assert [e.type for e in raw.parse()][-1] == "message_stop"
        else:
            assert raw.parse().content[0].text.startswith("Hello from the fake upstream")
        assert raw.headers["x-gateway-dropped"] == "cache_control"
    sent = [c.body for c in fake_upstream.calls("caps")]
    want = {"model": "up-model", "messages": UPSTREAM_MESSAGES, "tools": UPSTREAM_TOOLS,
            "max_tokens": 16000, "reasoning_effort": "high"}
    if stream:
        want.update(stream=True, stream_options={"include_usage": True})
    assert sent == [want, want]


def test_claude_code_thinking_to_a_route_that_does_not_reason_is_dropped_and_named(
        gateway_url, fake_upstream, api_key):
    import anthropic

    _routes(fake_upstream, reasoning="false")
    client = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0, timeout=30)
    budget = client.messages.with_raw_response.create(
        model="gw-model", thinking={"type": "enabled", "budget_tokens": 31999},
        **CLAUDE_CODE_LIVE)
    adaptive = client.messages.with_raw_response.create(
        model="gw-model", thinking={"type": "adaptive"},
        extra_body={"output_config": {"effort": "high"}}, **CLAUDE_CODE_LIVE)
    assert budget.headers["x-gateway-dropped"] == "thinking, cache_control"
    assert adaptive.headers["x-gateway-dropped"] == \
        "thinking, output_config.effort, cache_control"
    want = {"model": "up-model", "messages": UPSTREAM_MESSAGES, "tools": UPSTREAM_TOOLS,
            "max_tokens": 32000}
    assert [c.body for c in fake_upstream.calls("caps")] == [want, want]


@pytest.fixture
def tool_loop_upstream():
    from tests.clients.tool_loop_upstream import ToolLoopUpstream

    server = ToolLoopUpstream()
    server.start()
    yield server
    server.stop()


def test_a_route_speaks_the_responses_wire_its_provider_does_not_and_the_reverse(
        gateway_url, tool_loop_upstream, api_key):
    import openai

    from providers.config_file import config_parse
    from providers.services import config_apply

    u = tool_loop_upstream
    config_apply(spec=config_parse(f"""
providers:
  - name: chat-provider
    kind: openai
    base_url: {u.base_url("chat-provider")}
    api_key: sk-a
    models:
      gw-chat: up-chat
      gw-resp: {{upstream: up-resp, responses_api: true, max_output_tokens: 500}}
  - name: resp-provider
    kind: openai
    base_url: {u.base_url("resp-provider")}
    api_key: sk-b
    translation: {{responses_api: true}}
    models:
      gw-resp2: up-resp2
      gw-chat2: {{upstream: up-chat2, responses_api: false}}
"""))
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0)
    for model in ("gw-chat", "gw-resp", "gw-resp2", "gw-chat2"):
        answer = client.chat.completions.create(
            model=model, max_tokens=900, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    paths = [(c.provider, c.path.rsplit("/v1", 1)[1], c.body["model"]) for c in u.calls()]
    assert paths == [("chat-provider", "/chat/completions", "up-chat"),
                     ("chat-provider", "/responses", "up-resp"),
                     ("resp-provider", "/responses", "up-resp2"),
                     ("resp-provider", "/chat/completions", "up-chat2")]
    # The route's output limit holds on the Responses wire too.
    assert u.calls()[1].body["max_output_tokens"] == 500
    assert u.calls()[2].body["max_output_tokens"] == 900


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        (GOLDEN / f"{name}.expected.json").write_text(
            json.dumps(translate(name), indent=1, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_passed_through_to_its_own_wire_is_clamped_to_the_routes_output_limit(
        gateway_url, fake_upstream, api_key, stream):
    import anthropic
    import openai

    from providers.config_file import config_parse
    from providers.services import config_apply

    config_apply(spec=config_parse(f"""
providers:
  - name: same-anth
    kind: anthropic
    base_url: {fake_upstream.base_url("same-anth")}
    api_key: sk-a
    models:
      claude-limited: {{upstream: up-claude, max_output_tokens: 8000}}
  - name: same-chat
    kind: openai
    base_url: {fake_upstream.base_url("same-chat")}
    api_key: sk-c
    models:
      chat-limited: {{upstream: up-chat, max_output_tokens: 4096}}
"""))
    claude = anthropic.Anthropic(base_url=gateway_url, api_key=api_key, max_retries=0, timeout=30)
    answer = claude.messages.create(model="claude-limited", max_tokens=32000, stream=stream,
                                    messages=[{"role": "user", "content": "hi"}])
    if stream:
        assert [e.type for e in answer][-1] == "message_stop"
    chat = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=api_key, max_retries=0, timeout=30)
    chat.chat.completions.create(model="chat-limited", max_completion_tokens=50000,
                                 messages=[{"role": "user", "content": "hi"}])
    chat.chat.completions.create(model="chat-limited", max_tokens=100,
                                 messages=[{"role": "user", "content": "hi"}])
    sent, = [c.body for c in fake_upstream.calls("same-anth")]
    assert (sent["model"], sent["max_tokens"]) == ("up-claude", 8000)
    assert [(c.body["model"], c.body.get("max_completion_tokens"), c.body.get("max_tokens"))
            for c in fake_upstream.calls("same-chat")] == [
        ("up-chat", 4096, None), ("up-chat", None, 100)]  # a cap under the limit stays
