"""Golden request translations: client request bodies (Claude Code's among them) parsed into
the IR and built for each upstream wire format and deployment capability, checked against the
reviewed expectation in golden/requests/<case>.expected.json: the upstream body, and what was
dropped on the way (the `x-gateway-dropped` names: the client codec's `ChatRequest.dropped`
followed by the upstream codec's own). OpenAI bodies are also read by the openai SDK's own
request types, which would lose any key the API does not define.

After an intended change to the translation, regenerate the expectations and review the diff:
    .venv/bin/python gateway/tests/test_codecs_request_golden.py --regenerate
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

if __name__ == "__main__":  # run as a script: make `gateway` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.codecs import anthropic_messages, openai_chat, openai_responses  # noqa: E402
from gateway.types import CodecOptions  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "requests"
CLIENT = {"anthropic_messages": anthropic_messages, "openai_chat": openai_chat,
          "openai_responses": openai_responses}
# target name -> (upstream codec, the deployment's codec options)
TARGETS: dict[str, tuple[Any, CodecOptions]] = {
    "openai_chat": (openai_chat, CodecOptions()),
    "openai_chat_reasoning": (openai_chat, CodecOptions(reasoning=True,
                                                        max_output_tokens=16384)),
    "openai_chat_no_reasoning": (openai_chat, CodecOptions(reasoning=False)),
    "anthropic_messages": (anthropic_messages, CodecOptions(reasoning=True)),
    "anthropic_messages_no_cache": (anthropic_messages, CodecOptions(reasoning=True,
                                                                     auto_cache=False)),
    "openai_responses": (openai_responses, CodecOptions()),
}
CACHE_1H = {"type": "ephemeral", "ttl": "1h"}
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}

CASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    # Claude Code 2.1 with a model name it does not know as a Claude model: the
    # mid-conversation-system beta, adaptive thinking with an effort, server tools, 1h caching.
    "claude_code_unknown_model": ("anthropic_messages", {
        "model": "gw-model", "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": CACHE_1H},
                   {"type": "text", "text": "Work in /tmp/w."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Say hi with Bash.", "cache_control": CACHE_1H}]},
            {"role": "system", "content": "The user's working directory is /tmp/w."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Run echo.", "signature": "sig-1"},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash",
                 "input": {"command": "echo hi"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "hi",
                 "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        ],
        "tools": [BASH,
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                  {"type": "web_fetch_20250910", "name": "web_fetch"},
                  {"type": "code_execution_20250825", "name": "code_execution"}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "container": "container_011",
        "mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "ex"}],
        "metadata": {"user_id": "user_abc_account_def_session_1"},
    }, ("openai_chat", "openai_chat_reasoning", "openai_chat_no_reasoning")),
    # Claude Code with a Claude model name: a thinking budget of 31,999 under max_tokens 32,000.
    "claude_code_thinking_budget": ("anthropic_messages", {
        "model": "gw-model", "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "messages": [{"role": "user", "content": "Plan the refactor."}],
    }, ("openai_chat", "openai_chat_reasoning")),
    # Blocks with no equivalent elsewhere, and the ones that have one.
    "anthropic_documents_and_server_blocks": ("anthropic_messages", {
        "model": "m", "max_tokens": 1000,
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "title": "Notes",
                 "source": {"type": "text", "media_type": "text/plain", "data": "Tea at 5."},
                 "citations": {"enabled": True}},
                {"type": "document", "source": {"type": "content", "content": [
                    {"type": "text", "text": "Part one."}, {"type": "text", "text": "Two."}]}},
                {"type": "document", "source": {"type": "file", "file_id": "file_011"}},
                {"type": "search_result", "source": "https://tea.example/", "title": "Tea",
                 "content": [{"type": "text", "text": "Tea is a drink."}]},
                {"type": "text", "text": "When is tea?"}]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                 "input": {"query": "tea time"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "At five.",
                 "citations": [{"type": "char_location", "cited_text": "Tea at 5.",
                                "document_index": 0, "start_char_index": 0,
                                "end_char_index": 9}]}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
        ],
    }, ("openai_chat",)),
    # An OpenAI client reaching Anthropic: what has no Anthropic form is named.
    "openai_to_anthropic_drops": ("openai_chat", {
        "model": "m", "messages": [{"role": "user", "content": "JSON please"}],
        "response_format": {"type": "json_object"}, "reasoning_effort": "minimal",
        "seed": 7, "logprobs": True, "max_tokens": 500,
    }, ("anthropic_messages",)),
    # Codex 0.171 with its default config (a namespace group, web_search, a custom tool, its
    # options), on a turn that replays a namespaced call, a custom call and their outputs.
    "codex_default_config": ("openai_responses", {
        "model": "gw-model", "stream": True, "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "Sandbox: read-only."}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Say hi, then patch."}]},
            {"type": "reasoning", "id": "rs_1", "summary": [],
             "encrypted_content": "gAAAA-opaque"},
            {"type": "function_call", "call_id": "call_1", "name": "spawn_agent",
             "namespace": "multi_agent_v1", "arguments": "{\"task\":\"hi\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "agent said hi"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed",
             "action": {"type": "search", "query": "hi"}},
            {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch",
             "input": "*** Begin Patch\n*** End Patch"},
            {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done!"}],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Runs a command",
             "strict": False, "parameters": {"type": "object", "properties": {
                 "cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.",
             "tools": [{"type": "function", "name": "spawn_agent", "strict": False,
                        "description": "Spawn a sub-agent",
                        "parameters": {"type": "object", "properties": {
                            "task": {"type": "string"}}}}]},
            {"type": "custom", "name": "apply_patch", "description": "Edit files.",
             "format": {"type": "grammar", "syntax": "lark",
                        "definition": "start: begin_patch hunk+ end_patch"}},
            {"type": "web_search", "external_web_access": False}],
        "tool_choice": "auto", "parallel_tool_calls": True, "store": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0190-session",
        "text": {"verbosity": "low"}, "service_tier": "auto", "truncation": "auto",
        "client_metadata": {"turn_id": "t1"},
    }, ("openai_chat", "anthropic_messages")),
    # An OpenAI agent loop reaching Anthropic: cache breakpoints on the last tool, the system
    # prompt and the last two user turns (the parallel results share the last one), unless the
    # route turns auto_cache off.
    "chat_agent_loop_to_anthropic": ("openai_chat", {
        "model": "m", "max_tokens": 500,
        "messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "List, then read."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "ls", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt b.txt"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_2", "type": "function",
                 "function": {"name": "cat", "arguments": "{\"path\":\"a.txt\"}"}},
                {"id": "call_3", "type": "function",
                 "function": {"name": "cat", "arguments": "{\"path\":\"b.txt\"}"}}]},
            {"role": "tool", "tool_call_id": "call_2", "content": "A"},
            {"role": "tool", "tool_call_id": "call_3", "content": "B"}],
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {
                      "type": "object", "properties": {}}}},
                  {"type": "function", "function": {"name": "cat", "parameters": {
                      "type": "object", "properties": {"path": {"type": "string"}}}}}],
    }, ("anthropic_messages", "anthropic_messages_no_cache")),
    # A Chat Completions client reaching a Responses-only model.
    "chat_to_responses": ("openai_chat", {
        "model": "m", "max_completion_tokens": 300, "reasoning_effort": "high",
        "stop": ["END"], "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True, "schema": {"type": "object"}}},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in it?"},
                {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "look", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {
            "type": "object", "properties": {}}}}],
    }, ("openai_responses",)),
    # Claude Code reaching a Responses-only model.
    "claude_code_to_responses": ("anthropic_messages", {
        "model": "gw-model", "max_tokens": 1000, "system": "You are Claude Code.",
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "messages": [
            {"role": "user", "content": "Say hi with Bash."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Run echo.", "signature": "sig-1"},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash",
                 "input": {"command": "echo hi"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "hi",
                 "is_error": True}]}],
        "tools": [BASH],
    }, ("openai_responses",)),
}


def translate(case: str) -> dict[str, Any]:
    surface, body, targets = CASES[case]
    req = CLIENT[surface].parse_request(body)
    out: dict[str, Any] = {"parse_dropped": list(req.dropped)}
    for target in targets:
        codec, options = TARGETS[target]
        dropped: list[str] = []
        built = codec.build_request(req, upstream_model="up-model", stream=req.stream,
                                    options=options, dropped=dropped)
        out[target] = {"body": built, "dropped": dropped}
    return out


def expected(case: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{case}.expected.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_request_translation_matches_golden(case: str) -> None:
    actual, want = translate(case), expected(case)
    assert actual["parse_dropped"] == want["parse_dropped"]
    for target in CASES[case][2]:
        assert actual[target] == want[target], f"{case} -> {target} differs"


@pytest.mark.parametrize("case", [c for c in CASES if "openai_chat" in CASES[c][2]])
def test_translated_openai_bodies_are_valid_requests(case: str) -> None:
    from gateway.tests.test_codecs_openai_chat import sdk_valid

    for target in CASES[case][2]:
        if target.startswith("openai_chat"):
            body = translate(case)[target]["body"]
            assert sdk_valid(body) == body


def test_claude_code_system_turns_stay_in_place_as_system_messages() -> None:
    body = translate("claude_code_unknown_model")["openai_chat"]["body"]
    assert [m["role"] for m in body["messages"]] \
        == ["system", "user", "system", "assistant", "tool", "system"]
    assert body["messages"][2]["content"] == "The user's working directory is /tmp/w."


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        (GOLDEN / f"{name}.expected.json").write_text(
            json.dumps(translate(name), indent=1, ensure_ascii=False) + "\n")
