"""Automatic prompt caching for OpenAI-shaped agent loops sent to an Anthropic upstream: a
10-turn tool loop (each turn appends the assistant's tool call and its result), driven by the
official openai SDK through a live gateway to the fake upstream with Anthropic's prefix-cache
accounting (`prefix_cache`), bills most of its input as cache reads in the ledger, and none with
the provider's `auto_cache: false`.

Share arithmetic: turn 1 writes its whole prompt; every later turn reads the previous turn's
whole prompt (its last block was the previous breakpoint) and writes what it added. With a
first prompt of P tokens and D added per turn, the ten turns read 9P + 36D of 10P + 45D.
"""
from __future__ import annotations

import json
from fractions import Fraction

import openai
import pytest

from providers.config_file import config_parse
from providers.services import config_apply
from providers.translation import codec_options, translation_problem

TURNS = 10
SYSTEM = ("You are a coding agent working in a large repository. Read files with the tool, "
          "one at a time, and report what you find. ") * 8
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file of the repository",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]
RESPONSES_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]
ARGS = json.dumps({"path": "src/main.py"})


def file_text(turn: int) -> str:
    return f"# file {turn}\n" + "def handler(request):\n    return respond(request)\n" * 6


@pytest.fixture
def caching_upstream(fake_anthropic_provider):
    fake_anthropic_provider.behave("fake-anth", prefix_cache=True,
                                   tool_call={"name": "read_file", "arguments": ARGS})
    return fake_anthropic_provider


@pytest.fixture
def uncached_provider(fake_upstream, transactional_db):
    """Provider `fake-nocache` (kind anthropic, `auto_cache: false`) serving `claude-nocache`."""
    config_apply(spec=config_parse(f"""
providers:
  - name: fake-nocache
    kind: anthropic
    base_url: {fake_upstream.base_url("fake-nocache")}
    api_key: sk-ant-fake-upstream-secret
    translation: {{auto_cache: false}}
    models:
      claude-nocache: up-claude
prices:
  - model: up-claude
    input: "3.00"
    output: "15.00"
    cached_input: "0.30"
"""))
    fake_upstream.behave("fake-nocache", prefix_cache=True,
                         tool_call={"name": "read_file", "arguments": ARGS})
    return fake_upstream


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def chat_loop(client: openai.OpenAI, model: str) -> None:
    messages: list[dict] = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": "Find the request handler."}]
    for turn in range(TURNS):
        reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        [call] = reply.choices[0].message.tool_calls
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"{call.id}_{turn}", "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]})
        messages.append({"role": "tool", "tool_call_id": f"{call.id}_{turn}",
                         "content": file_text(turn)})


def responses_loop(client: openai.OpenAI, model: str) -> None:
    items: list[dict] = [{"role": "user", "content": "Find the request handler."}]
    for turn in range(TURNS):
        response = client.responses.create(model=model, instructions=SYSTEM, input=items,
                                           tools=RESPONSES_TOOLS)
        [call] = [item for item in response.output if item.type == "function_call"]
        items.append({"type": "function_call", "call_id": f"{call.call_id}_{turn}",
                      "name": call.name, "arguments": call.arguments})
        items.append({"type": "function_call_output", "call_id": f"{call.call_id}_{turn}",
                      "output": file_text(turn)})


def _share(rows) -> Fraction:
    assert len(rows) == TURNS and all(r.status == "ok" for r in rows)
    return Fraction(sum(r.cached_tokens for r in rows), sum(r.input_tokens for r in rows))


def _expected_share(rows) -> Fraction:
    """9P + 36D over 10P + 45D (module docstring), from the first two prompts' sizes."""
    first, added = rows[0].input_tokens, rows[1].input_tokens - rows[0].input_tokens
    return Fraction(9 * first + 36 * added, 10 * first + 45 * added)


@pytest.mark.parametrize("loop", [chat_loop, responses_loop], ids=["chat", "responses"])
def test_an_agent_loop_to_anthropic_bills_most_input_as_cache_reads(
        gateway_url, caching_upstream, api_key, ledger_rows, loop):
    loop(_client(gateway_url, api_key), "claude-test")
    rows = ledger_rows(TURNS)
    # Every turn after the first reads the whole previous prompt and writes only what it added.
    assert [r.cached_tokens for r in rows[1:]] == [r.input_tokens for r in rows[:-1]]
    assert [r.cache_write_5m_tokens for r in rows] == \
        [rows[0].input_tokens] + [b.input_tokens - a.input_tokens for a, b in zip(rows, rows[1:])]
    share = _share(rows)
    assert share == _expected_share(rows) == Fraction(3519, 4210)  # 83.6%
    assert share >= Fraction(70, 100), f"{float(share):.3f}"
    sent = caching_upstream.calls("fake-anth")[-1].body
    assert sent["tools"][-1]["cache_control"] == sent["system"][-1]["cache_control"] \
        == {"type": "ephemeral"}
    marked = [m for m in sent["messages"] if "cache_control" in m["content"][-1]]
    assert [m["role"] for m in marked] == ["user", "user"]
    assert marked[-1] is sent["messages"][-1]


def test_auto_cache_off_sends_no_breakpoints_and_bills_no_cache_reads(
        gateway_url, uncached_provider, api_key, ledger_rows):
    chat_loop(_client(gateway_url, api_key), "claude-nocache")
    rows = ledger_rows(TURNS)
    assert _share(rows) == 0
    assert all(r.cache_write_5m_tokens == 0 for r in rows)
    assert "cache_control" not in json.dumps([c.body for c in uncached_provider.calls()])


def test_auto_cache_is_a_validated_provider_setting_on_by_default() -> None:
    assert translation_problem({"auto_cache": "no"}) == "auto_cache: must be true or false"
    assert translation_problem({"auto_cache": False}, kind="anthropic") is None
    assert codec_options(kind="anthropic", translation={}).auto_cache is True
    assert codec_options(kind="anthropic", translation={"auto_cache": False}).auto_cache is False
